"""Prometheus metrics, one registry per app (so several apps in one process do not collide).

With ``WEB_CONCURRENCY`` > 1 each worker process has its own registry and ``/metrics`` answers
for whichever worker the request reached.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Bridge-added latency is queueing plus one socket write: microseconds to a few milliseconds.
ADDED_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005,
                 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
# Turn-level latencies include the model's own thinking time.
TURN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

# A business tool: a webhook or a function, a few milliseconds to its timeout.
TOOL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Bins:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # "le": a value on a bound counts in it
        self.total += value


class _Tally:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class LoopMetrics(Collector):
    """Per-message histograms and counters for the event loop's own thread: no locks.

    prometheus_client's own take a lock per observation, which showed up at ~5 % of the
    server's CPU under load. Only the loop thread updates these, and /metrics is served on
    that same loop, so a scrape never sees a half-done update.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._histograms: list[tuple[str, str, tuple[str, ...], tuple[float, ...], dict]] = []
        self._counters: list[tuple[str, str, tuple[str, ...], dict]] = []
        registry.register(self)

    def histogram(self, name: str, doc: str, label: str, values: Iterable[str],
                  buckets: tuple[float, ...]) -> dict[str, _Bins]:
        children = {v: _Bins(buckets) for v in values}
        self._histograms.append((name, doc, (label,) if label else (), buckets, children))
        return children

    def counter(self, name: str, doc: str, label: str, values: Iterable[str]) -> dict[str, _Tally]:
        children = {v: _Tally() for v in values}
        self._counters.append((name, doc, (label,), children))
        return children

    def collect(self) -> Iterable[Metric]:
        for name, doc, labels, bounds, children in self._histograms:
            family = HistogramMetricFamily(name, doc, labels=labels)
            for value, bins in children.items():
                running, cumulative = 0, []
                for le, n in zip((*map(str, bounds), "+Inf"), bins.counts):
                    running += n
                    cumulative.append((le, running))
                family.add_metric([value] if labels else [], cumulative, bins.total)
            yield family
        for name, doc, labels, children in self._counters:
            family = CounterMetricFamily(name, doc, labels=labels)
            for value, tally in children.items():
                family.add_metric([value], tally.value)
            yield family

    def describe(self) -> Iterable[Metric]:
        return []


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.active_calls = Gauge("telephony_active_calls", "Calls being bridged now", registry=r)
        self.active_calls_by_route = Gauge(
            "telephony_active_calls_by_route",
            "Calls in progress now, by route (the carrier whose media passes through us: twilio, "
            "telnyx, signalwire, plivo, vonage; openai_sip: OpenAI's SIP route, controlled over the sideband)",
            ["route"], registry=r)
        self.calls = Counter("telephony_calls", "Calls ended, by outcome (normal or abnormal)",
                             ["outcome"], registry=r)
        self.streams_refused = Counter(
            "telephony_streams_refused", "Media stream sockets refused, by route (agent, transcription) and "
            "reason: at the handshake for their URL (missing_path, bad_path, expired_path, wrong_route_path, "
            "route_off), or with a valid URL (call_pending, pending_limit, no_start, bad_start, token_reused, "
            "call_streaming, busy)", ["route", "reason"], registry=r)
        self.realtime_errors = Counter("telephony_realtime_errors", "Realtime error events, by code",
                                       ["code"], registry=r)
        self.barge_ins = Counter("telephony_barge_ins", "Caller speech over the agent (the agent paused)",
                                 registry=r)
        self.interruptions = Counter(
            "telephony_interruptions", "What caller speech over the agent turned out to be, by decision "
            "(resumed: a backchannel or a noise, the answer went on; stopped: a real interruption)",
            ["decision"], registry=r)
        for decision in ("resumed", "stopped"):  # both series exist from the start, at 0
            self.interruptions.labels(decision)
        self.tool_calls = Counter("telephony_tool_calls", "Tool calls by the model, by tool and outcome "
                                  "(ok, error, timeout, invalid_arguments, unknown_tool)",
                                  ["tool", "outcome"], registry=r)
        self.tool_latency = Histogram("telephony_tool_latency_seconds",
                                      "A business tool's start to its output (or error, or timeout)",
                                      ["tool"], buckets=TOOL_BUCKETS, registry=r)
        self.handoffs = Counter("telephony_handoffs", "Calls handed to another stream on shutdown, by outcome "
                                "(handed_over, failed on the old instance; resumed, state_missing on the new)",
                                ["outcome"], registry=r)
        loop = LoopMetrics(r)
        frames_in = loop.counter("telephony_frames_received", "Websocket messages received, by peer",
                                 "peer", ("twilio", "realtime"))
        frames_out = loop.counter("telephony_frames_sent", "Websocket messages sent, by peer",
                                  "peer", ("twilio", "realtime"))
        added = loop.histogram(
            "telephony_bridge_added_latency_seconds",
            "Arrival of a message on one socket to its write on the other, by destination",
            "direction", ("to_twilio", "to_realtime"), ADDED_BUCKETS)
        self.response_latency = Histogram(
            "telephony_response_latency_seconds",
            "Caller stopped speaking (speech_stopped) to the first agent audio sent to Twilio",
            buckets=TURN_BUCKETS, registry=r)
        self.barge_in_latency = Histogram(
            "telephony_barge_in_latency_seconds",
            "speech_started received to Twilio clear sent", buckets=ADDED_BUCKETS, registry=r)
        self.to_twilio, self.to_realtime = added["to_twilio"], added["to_realtime"]
        self.in_twilio, self.in_realtime = frames_in["twilio"], frames_in["realtime"]
        self.out_twilio, self.out_realtime = frames_out["twilio"], frames_out["realtime"]

    def render(self) -> bytes:
        return generate_latest(self.registry)
