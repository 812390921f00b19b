"""One call's observer: turns what the bridge moves and what the core records into metrics,
log lines and the call record. Created per call by the app; holds no state beyond its call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telephony.core.call import Call, Record
from telephony.history.recorder import CallHistory
from telephony.ops import logs
from telephony.ops.metrics import Metrics
from telephony.ops.records import CallRecordFile
from telephony.serve.bridge import BridgeObserver

if TYPE_CHECKING:
    from telephony.ops.tracing import CallTrace

log = logging.getLogger("telephony.call_events")

# Facts logged at INFO; the rest (transcripts, speech_stopped) only at DEBUG.
_INFO_KINDS = frozenset({"start", "end", "barge_in", "interruption", "response_done", "realtime_error", "dtmf",
                         "tool_call", "recording"})


@dataclass
class _Running:
    """Count, mean and max of one latency without keeping the samples (memory per call)."""

    count: int = 0
    total: float = 0.0
    worst: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.worst:
            self.worst = value

    def summary(self) -> dict[str, Any]:
        mean = self.total / self.count if self.count else 0.0
        return {"count": self.count, "mean_ms": round(mean * 1000, 3), "max_ms": round(self.worst * 1000, 3)}


class CallObserver(BridgeObserver):
    def __init__(self, metrics: Metrics, records_dir: Path | None, log_ids: dict[str, str | None],
                 clock=time.monotonic, route: str = "twilio", history: CallHistory | None = None,
                 trace: CallTrace | None = None) -> None:
        self.metrics = metrics
        self.records_dir = records_dir
        self.log_ids = log_ids
        self.clock = clock  # the bridge's loop clock is time.monotonic
        self.file: CallRecordFile | None = None
        self.outcome: str | None = None
        self._started = clock()
        self._stopped_at: float | None = None  # caller's last speech_stopped, until agent audio
        self._clear_pending = False
        self._added = {"twilio": _Running(), "realtime": _Running()}
        self.route = route
        self.history = history  # the call's rows for the history database, if it is on
        self.trace = trace  # the call's spans (ops/tracing.py); None when tracing is off
        metrics.active_calls.inc()
        metrics.active_calls_by_route.labels(route).inc()

    # --- BridgeObserver: called per message, so kept lean ---

    def received(self, peer: str) -> None:
        (self.metrics.in_twilio if peer == "twilio" else self.metrics.in_realtime).inc()

    def sent(self, peer: str, kind: str, arrived: float, now: float) -> None:
        added = now - arrived
        self._added[peer].add(added)
        m = self.metrics
        if peer == "realtime":
            m.out_realtime.inc()
            m.to_realtime.observe(added)
            return
        m.out_twilio.inc()
        m.to_twilio.observe(added)
        if kind == "media":
            if self._stopped_at is not None:
                turn = now - self._stopped_at
                self._stopped_at = None
                m.response_latency.observe(turn)
                self._write("response_latency", {"ms": round(turn * 1000, 1)})
                if self.trace is not None:
                    self.trace.agent_audio(now, turn)
            if self.history is not None and self.history.awaiting_audio:
                self.history.audio_sent(arrived, now)
        elif kind == "clear":
            m.barge_in_latency.observe(added)
            self._write("clear_sent", {"ms_after_speech_started": round(added * 1000, 3)})

    # --- Records from the core ---

    def on_record(self, call: Call, record: Record) -> None:
        kind, data = record.kind, record.data
        if kind == "start":
            self.log_ids.update(call_sid=call.call_sid, stream_sid=call.stream_sid)
            if self.records_dir is not None and call.call_sid:
                self.file = CallRecordFile(self.records_dir, call.call_sid)
            data = {**data, "route": self.route, "codec": call.audio_format, "parameters": call.parameters}
        elif kind == "speech_stopped":
            self._stopped_at = self.clock()
        elif kind == "barge_in":
            self.metrics.barge_ins.inc()
        elif kind == "interruption":
            self.metrics.interruptions.labels(data["decision"]).inc()
        elif kind == "realtime_error":
            self.metrics.realtime_errors.labels(data.get("code") or data.get("type") or "unknown").inc()
        elif kind == "tool_call":
            self._count_tool_call(data)
        elif kind == "end":
            self.outcome = ("handed_over" if data.get("handed_over")
                            else "abnormal" if data.get("abnormal") else "normal")
        self._write(kind, data)
        if self.history is not None:
            if kind == "start":
                self.history.start(call.call_sid or "", call.stream_sid, call.parameters, call.profile.name)
            else:
                self.history.record(kind, data)
        level = logging.INFO if kind in _INFO_KINDS else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "call event %s", kind, extra=logs.safe_extra({
                "event": kind, **{k: v for k, v in data.items() if k not in logs.CALLER_DATA}}))
        if self.trace is not None:
            self.trace.on_record(call, kind, record.data)

    def _count_tool_call(self, data: dict[str, Any]) -> None:
        outcome = data.get("outcome", "ok")
        tool = "unknown" if outcome == "unknown_tool" else str(data.get("name"))  # the model's guesses: one label
        self.metrics.tool_calls.labels(tool, outcome).inc()
        if outcome in ("ok", "error", "timeout") and data.get("latency_ms") is not None:
            self.metrics.tool_latency.labels(tool).observe(data["latency_ms"] / 1000)

    def _write(self, kind: str, data: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(kind, data)

    def close(self) -> None:
        """The media stream is over: count the call and finish its record."""
        self.metrics.active_calls.dec()
        self.metrics.active_calls_by_route.labels(self.route).dec()
        outcome = self.outcome or "no_start"  # the socket closed before Twilio's start
        if outcome != "handed_over":  # counted once, where it ends: handoffs_total says it moved
            self.metrics.calls.labels(outcome).inc()
        self._write("summary", {
            "outcome": outcome, "duration_s": round(self.clock() - self._started, 3),
            "added_latency": {"to_twilio": self._added["twilio"].summary(),
                              "to_realtime": self._added["realtime"].summary()}})
        if self.file is not None:
            self.file.close()
        if self.history is not None:
            self.history.close()
        if self.trace is not None:
            self.trace.close(outcome)
