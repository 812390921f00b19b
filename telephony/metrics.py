"""Prometheus metrics, one registry per app (so several apps in one process do not collide).

With ``WEB_CONCURRENCY`` > 1 each worker process has its own registry and ``/metrics`` answers
for whichever worker the request reached.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

# Bridge-added latency is queueing plus one socket write: microseconds to a few milliseconds.
ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05,
                 0.1, 0.25)
# Turn-level latencies include the model's own thinking time.
TURN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.active_calls = Gauge("telephony_active_calls", "Calls being bridged now", registry=r)
        self.calls = Counter("telephony_calls", "Calls ended, by outcome (normal or abnormal)",
                             ["outcome"], registry=r)
        self.frames_in = Counter("telephony_frames_received", "Websocket messages received, by peer",
                                 ["peer"], registry=r)
        self.frames_out = Counter("telephony_frames_sent", "Websocket messages sent, by peer",
                                  ["peer"], registry=r)
        self.realtime_errors = Counter("telephony_realtime_errors", "Realtime error events, by code",
                                       ["code"], registry=r)
        self.barge_ins = Counter("telephony_barge_ins", "Caller interruptions of the agent", registry=r)
        self.added_latency = Histogram(
            "telephony_bridge_added_latency_seconds",
            "Arrival of a message on one socket to its write on the other, by destination",
            ["direction"], buckets=ADDED_BUCKETS, registry=r)
        self.response_latency = Histogram(
            "telephony_response_latency_seconds",
            "Caller stopped speaking (speech_stopped) to the first agent audio sent to Twilio",
            buckets=TURN_BUCKETS, registry=r)
        self.barge_in_latency = Histogram(
            "telephony_barge_in_latency_seconds",
            "speech_started received to Twilio clear sent", buckets=ADDED_BUCKETS, registry=r)
        # Children resolved once: label lookup is a dict access plus a lock per call otherwise.
        self.to_twilio = self.added_latency.labels("to_twilio")
        self.to_realtime = self.added_latency.labels("to_realtime")
        self.in_twilio = self.frames_in.labels("twilio")
        self.in_realtime = self.frames_in.labels("realtime")
        self.out_twilio = self.frames_out.labels("twilio")
        self.out_realtime = self.frames_out.labels("realtime")

    def render(self) -> bytes:
        return generate_latest(self.registry)
