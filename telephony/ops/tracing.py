"""Traces: one per call, exported over OTLP/HTTP (protobuf) when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Spans are built from the same stream of records the call core emits for the call records and
metrics (serve/telemetry.py hands each one on), so the core knows nothing of tracing:

    call                     route, dialect, profile, codec, direction, outcome, end reason
    ├── turn 0               before the caller's first turn (the greeting)
    ├── turn N               from the caller's end of speech to the next one (or the call's end);
    │   │                    latency_ms: to the first agent audio sent; events: barge_in, interruption
    │   └── tool_call        name, outcome, latency_ms (the span covers the tool's run)
    ├── realtime_reconnect   from the model's socket dropping to the session restored
    └── handoff              the call moved to (out) or came from (in) another instance

Off and free when unset: this module imports nothing of OpenTelemetry until ``call_tracing``
finds an endpoint, and the app then creates nothing per call. When on, spans are ended on the
event loop (a few microseconds each, a handful per turn) and exported by the SDK's
BatchSpanProcessor in its own thread: a slow, hung or refusing collector delays nothing but
that thread, and its queue is bounded (OTEL_BSP_MAX_QUEUE_SIZE: past it spans are dropped).

Caller data stays out, as in the logs (``logs.CALLER_DATA``): no transcripts, numbers, tool
arguments or outputs, digits; no secrets (the exporter's headers are the SDK's business).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from telephony.ops.logs import CALLER_DATA

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Span, Tracer

    from telephony.core.call import Call
    from telephony.settings import Settings

log = logging.getLogger("telephony.tracing")

TRACES_PATH = "v1/traces"  # appended to OTEL_EXPORTER_OTLP_ENDPOINT, as the SDK does
SERVICE_NAME = "telephony"  # unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names it
_ATTRIBUTE_TYPES = (str, bool, int, float)


def traces_endpoint(settings: Settings) -> str | None:
    """Where spans go: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else OTEL_EXPORTER_OTLP_ENDPOINT
    with /v1/traces (the OTLP/HTTP spec's rule, which the SDK follows); None: tracing is off."""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    if settings.otel_exporter_otlp_endpoint:
        return f"{settings.otel_exporter_otlp_endpoint.rstrip('/')}/{TRACES_PATH}"
    return None


def call_tracing(settings: Settings) -> Tracing | None:
    """The app's tracing, or None (the default) when no OTLP endpoint is set."""
    endpoint = traces_endpoint(settings)
    return Tracing(endpoint, settings.realtime_dialect) if endpoint else None


class Tracing:
    """One TracerProvider per app (not the global one: several apps in a process, as in the tests,
    keep theirs apart), exporting in batches from the SDK's own thread. The SDK reads its other
    variables itself: headers, timeout, compression, certificates, OTEL_BSP_*, OTEL_SERVICE_NAME."""

    def __init__(self, endpoint: str, dialect: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from telephony import __version__

        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        self.endpoint = endpoint
        self.dialect = dialect
        self.processor: BatchSpanProcessor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
        self.provider: TracerProvider = TracerProvider(resource=resource)
        self.provider.add_span_processor(self.processor)
        self.tracer: Tracer = self.provider.get_tracer("telephony", __version__)
        log.info("traces: exported to %s", endpoint)

    def call(self, route: str, dialect: str | None = None, audio: bool = True) -> CallTrace:
        """``audio``: the call's audio passes through us, so each turn's latency is known."""
        return CallTrace(self.tracer, route, dialect or self.dialect, audio=audio)

    async def flush(self, timeout_s: float) -> bool:
        """Exports what is queued; False if that took longer than ``timeout_s`` (it goes on, in
        its own thread, but no one waits for it)."""
        return await _bounded(self.processor.force_flush, timeout_s)

    async def shutdown(self, timeout_s: float) -> bool:
        """Exports what is queued and stops, within ``timeout_s`` whatever the collector does."""
        return await _bounded(self.processor.shutdown, timeout_s)


async def _bounded(work: Callable[[], Any], timeout_s: float) -> bool:
    """Runs blocking SDK work in a daemon thread of its own, waited for at most ``timeout_s``. Not
    asyncio.to_thread: an export stuck on a hung collector would hold the default executor, and
    asyncio.run waits for that executor's threads at exit."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def run() -> None:
        try:
            work()
        except Exception:  # noqa: BLE001 - an exporter's failure is logged by the SDK; the app goes on
            log.exception("traces: flush failed")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: no one waits any more
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    threading.Thread(target=run, name="telephony-traces-flush", daemon=True).start()
    try:
        await asyncio.wait_for(done, timeout_s)
        return True
    except asyncio.TimeoutError:
        log.warning("traces: the collector did not take the last spans within %.1f s; they are dropped", timeout_s)
        return False


def _attributes(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A record's facts as span attributes: scalars only, never caller data (as in the logs)."""
    return {f"{prefix}.{key}": value for key, value in data.items()
            if key not in CALLER_DATA and isinstance(value, _ATTRIBUTE_TYPES)}


def _reason(reason: str) -> str:
    """An end reason for a span: ours, except end_call's, whose words after the colon are the
    model's (they may repeat the caller's)."""
    return "end_call" if reason.startswith("end_call:") else reason


class CallTrace:
    """One call's spans, fed by its CallObserver: ``on_record`` with every record of the core,
    ``agent_audio`` when a turn's first agent audio is sent, ``close`` when the stream is over.
    Times are the observer's loop clock (monotonic), mapped onto the wall clock once, so that a
    turn's latency attribute and its first-audio event agree with the metrics to the microsecond."""

    def __init__(self, tracer: Tracer, route: str, dialect: str, clock: Callable[[], float] = time.monotonic,
                 audio: bool = True) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = tracer
        self._clock = clock
        self._wall_ns, self._mono = time.time_ns(), clock()
        self.span: Span = tracer.start_span("call", start_time=self._wall_ns, attributes={
            "call.route": route, "call.dialect": dialect})
        self._context = trace.set_span_in_context(self.span)
        self._turn: Span | None = None
        self._turns = 0
        self._answered: bool | None = None  # the current turn's first agent audio was sent (None: greeting)
        self._reconnect: Span | None = None
        self._audio = audio
        self._barge_ins = 0

    def _ns(self, mono: float | None = None) -> int:
        return self._wall_ns + int(((self._clock() if mono is None else mono) - self._mono) * 1e9)

    def _child(self, name: str, parent: Span | None, start_ns: int, attributes: dict[str, Any]) -> Span:
        context = self._context if parent is None else self._trace.set_span_in_context(parent)
        return self._tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes)

    def _new_turn(self, at_ns: int, **attributes: Any) -> None:
        self._end_turn(at_ns)
        self._turn = self._child("turn", None, at_ns, {"turn.number": self._turns, **attributes})
        self._turns += 1
        # None: not known (the greeting answers no one; without our audio, no first audio is seen).
        self._answered = None if attributes.get("turn.greeting") or not self._audio else False

    def _end_turn(self, at_ns: int) -> None:
        if self._turn is not None:
            if self._answered is not None:
                self._turn.set_attribute("turn.answered", self._answered)
            self._turn.end(at_ns)
            self._turn = None

    def _event(self, name: str, attributes: dict[str, Any]) -> None:
        """On the turn under way (the answer the caller talked over), else on the call."""
        (self._turn or self.span).add_event(name, attributes, self._ns())

    # --- From the observer ---

    def agent_audio(self, now: float, latency_s: float) -> None:
        """The first agent audio after the caller's end of speech was sent (the observer's turn latency)."""
        if self._turn is not None and self._answered is False:
            self._answered = True
            self._turn.set_attribute("turn.latency_ms", round(latency_s * 1000, 1))
            self._turn.add_event("agent_audio_sent", None, self._ns(now))

    def on_record(self, call: Call, kind: str, data: dict[str, Any]) -> None:
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, call, data)

    def close(self, outcome: str) -> None:
        now = self._ns()
        self._end_turn(now)
        if self._reconnect is not None:  # the call ended before the model came back
            self._reconnect.set_status(self._trace.Status(self._trace.StatusCode.ERROR, "not reconnected"))
            self._reconnect.end(now)
        self.span.set_attributes({"call.outcome": outcome, "call.turns": self._turns,
                                  "call.barge_ins": self._barge_ins})
        if outcome in ("abnormal", "no_start"):
            self.span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, outcome))
        self.span.end(now)

    # --- Records, by kind ---

    def _start(self, call: Call, data: dict[str, Any]) -> None:
        direction = call.parameters.get("direction", "")
        self.span.set_attributes({
            "call.sid": call.call_sid or "", "call.stream_sid": call.stream_sid or "",
            "call.profile": call.profile.name, "call.codec": call.audio_format,
            **({"call.direction": direction} if direction else {})})
        self._new_turn(self._ns(), **{"turn.greeting": True})

    def _speech_stopped(self, call: Call, data: dict[str, Any]) -> None:
        self._new_turn(self._ns())

    def _barge_in(self, call: Call, data: dict[str, Any]) -> None:
        self._barge_ins += 1
        self._event("barge_in", _attributes(data, "barge_in"))

    def _interruption(self, call: Call, data: dict[str, Any]) -> None:
        self._event("interruption", _attributes(data, "interruption"))

    def _tool_call(self, call: Call, data: dict[str, Any]) -> None:
        end = self._ns()
        latency_ms = data.get("latency_ms")
        start = end - int(latency_ms * 1e6) if isinstance(latency_ms, (int, float)) else end
        outcome = str(data.get("outcome", "ok"))
        name = "unknown" if outcome == "unknown_tool" else str(data.get("name"))  # the model's guesses: one name
        span = self._child("tool_call", self._turn, start, {
            "tool.name": name, "tool.outcome": outcome,
            **({"tool.latency_ms": latency_ms} if latency_ms is not None else {})})
        if outcome != "ok":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, outcome))
        span.end(end)

    def _realtime_dropped(self, call: Call, data: dict[str, Any]) -> None:
        if self._reconnect is None:
            self._reconnect = self._child("realtime_reconnect", None, self._ns(),
                                          {"realtime.drop_reason": str(data.get("reason", ""))})

    def _realtime_reconnected(self, call: Call, data: dict[str, Any]) -> None:
        if self._reconnect is not None:
            self._reconnect.set_attribute("realtime.items_restored", int(data.get("items", 0)))
            self._reconnect.end(self._ns())
            self._reconnect = None

    def _end(self, call: Call, data: dict[str, Any]) -> None:
        self.span.set_attribute("call.end_reason", _reason(str(data.get("reason", ""))))

    def _dtmf(self, call: Call, data: dict[str, Any]) -> None:
        self._event("dtmf", {"dtmf.count": len(str(data.get("digits", "")))})  # never the digits

    def _answered_by(self, call: Call, data: dict[str, Any]) -> None:
        self.span.set_attribute("call.answered_by", str(data.get("answered_by", "")))


def _handoff(direction: str) -> Callable[[CallTrace, Call, dict[str, Any]], None]:
    """The call moved to another instance ("out") or came from one ("in"): a span of the moment,
    under the call; the other instance's trace has the same call.sid."""
    def record(trace: CallTrace, call: Call, data: dict[str, Any]) -> None:
        now = trace._ns()
        items = data.get("conversation_items", data.get("items"))
        trace._child("handoff", None, now, {"handoff.direction": direction,
                                           **({"handoff.items": items} if items is not None else {})}).end(now)
    return record


def _call_event(name: str, keep: bool = True) -> Callable[[CallTrace, Call, dict[str, Any]], None]:
    """A record kept as an event on the call span, with its safe facts (``keep``) or none."""
    def record(trace: CallTrace, call: Call, data: dict[str, Any]) -> None:
        trace.span.add_event(name, _attributes(data, name) if keep else None, trace._ns())
    return record


_HANDLERS: dict[str, Callable[[CallTrace, Call, dict[str, Any]], None]] = {
    "start": CallTrace._start,
    "speech_stopped": CallTrace._speech_stopped,
    "barge_in": CallTrace._barge_in,
    "interruption": CallTrace._interruption,
    "tool_call": CallTrace._tool_call,
    "realtime_dropped": CallTrace._realtime_dropped,
    "realtime_reconnected": CallTrace._realtime_reconnected,
    "handed_over": _handoff("out"),
    "resumed": _handoff("in"),
    "end": CallTrace._end,
    "dtmf": CallTrace._dtmf,
    "answered_by": CallTrace._answered_by,
    "refused": _call_event("refused"),
    "realtime_error": _call_event("realtime_error"),
    "transferred": _call_event("transferred", keep=False),  # its target may be a caller's own number or URI
    "after_playout": _call_event("after_playout"),
    "tool_filler": _call_event("tool_filler"),
}
