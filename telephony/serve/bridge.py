"""The shell around one call: Twilio's messages (through the direct lane, or an ASGI reader)
and the Realtime pump feed one ``Call`` object.

Actions are written out synchronously, in the order the core returned them, straight onto
each socket (under any ASGI server but ours, Twilio's side is a queue with a single writer
task). That is what keeps a ``clear`` from overtaking the media it must drop, or media of
an interrupted item from slipping out after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from telephony.core.actions import (
    Action,
    EndStream,
    HangUp,
    OpenRealtime,
    Record,
    RunTool,
    ToRealtime,
    ToTwilio,
    Transfer,
)
from telephony.core.call import Call
from telephony.serve.carriers import CarrierControl, CarrierError
from telephony.serve.direct_lane import DIRECT_LANE, payload
from telephony.serve.realtime_client import RealtimeTransport
from telephony.serve.recordings import Recorder, Recordings
from telephony.serve.tools import CallTools, ToolRunner
from telephony.serve.upstream import Connector
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw
from telephony.wire.media import TWILIO_MEDIA, MediaWire, UnusedEvent

log = logging.getLogger("telephony.bridge")
# How long the greeting may wait for a call's MCP servers to list their tools (the rest arrive later).
MCP_DISCOVERY_DEADLINE_S = 1.0

TICK_S = 0.05
QUEUE_LIMIT = 2000  # plain-ASGI Twilio queue, messages (~40 s of audio): past it, drop
CLOSE_TIMEOUT_S = 1.0
DROP_WARNING_EVERY_S = 5.0  # a stalled peer drops 50 messages a second: say so, not 50 times
POLICY_VIOLATION = 1008  # websocket close code for a stream we refuse

RecordSink = Callable[[Call, Record], None]


class BridgeObserver:
    """Told of every message moved (metrics hook); this default ignores them."""

    def received(self, peer: str) -> None:
        pass

    def sent(self, peer: str, kind: str, arrived: float, now: float) -> None:
        """``kind``: "media", "mark", "clear" towards Twilio, "" towards Realtime. Times: loop clock."""


@dataclass
class BridgeStats:
    twilio_in: int = 0
    twilio_out: int = 0
    realtime_in: int = 0
    realtime_out: int = 0


class Bridge:
    handoff_outcome: "asyncio.Future[bool] | None" = None  # set while the call is handed over (serve/handoff.py)

    async def handoff_settled(self, timeout_s: float = 5.0) -> bool:
        """True once the call went on in another stream; a handoff under way is waited for (Twilio
        stops this stream as it acts on the update, often before its REST answer arrives)."""
        if self.handoff_outcome is None:
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(self.handoff_outcome), timeout_s)
        except asyncio.TimeoutError:
            return False

    def __init__(self, ws: WebSocket, call: Call, dialect: rt.Dialect, connector: Connector,
                 on_record: RecordSink | None = None, call_control: CarrierControl | None = None,
                 max_message_bytes: int | None = None, observer: BridgeObserver | None = None,
                 tools: ToolRunner | None = None,
                 prepare: Callable[[Call], Awaitable[None]] | None = None,
                 release_stream: Callable[[], Awaitable[None]] | None = None,
                 recordings: Recordings | None = None, wire: MediaWire = TWILIO_MEDIA,
                 carrier_call_id: str = "") -> None:
        self.ws = ws
        # The carrier's media format (wire/media.py): its frames ⇄ the core's neutral events.
        self.wire = wire
        # The call's id at its carrier, for hang-up and transfer ("": the call sid, as on Twilio).
        self.carrier_call_id = carrier_call_id
        self.recordings = recordings
        self.recorder: Recorder | None = None  # from the call's start, when its profile records
        # Gives up this stream's claim on its call (its admission's release): a handoff does so
        # before its new stream opens.
        self.release_stream = release_stream or _nothing
        self.tools = CallTools(tools or ToolRunner(), call)
        # Run with the first Realtime connect, before the session is configured (a handed-over
        # call's saved state is fetched so, in parallel with the handshake).
        self.prepare = prepare
        self.call_control = call_control
        self.call = call
        self.dialect = dialect
        self.connector = connector
        self.on_record = on_record
        self.observer = observer or BridgeObserver()
        # A dialect may serialise its hot commands itself; any other is a dict through json.
        self._serialize: Callable[[rt.Command], str] = getattr(
            dialect, "serialize", None) or (lambda command: json.dumps(dialect.encode(command)))
        self.stats = BridgeStats()
        self._loop = asyncio.get_running_loop()
        # uvicorn through our protocol offers a synchronous lane; any other server, plain ASGI:
        # then a queue with one writer task, items (text, arrival of its cause, kind) or None.
        self._lane = ws.scope.get("extensions", {}).get(DIRECT_LANE)
        self._twilio_out: asyncio.Queue[tuple[str | bytes, float, str] | None] = asyncio.Queue(QUEUE_LIMIT)
        # A wire that sends frames of its own accord after a parse (wire/media.py, ``released``).
        self._wire_released: Callable[[], Sequence[str | bytes]] | None = getattr(wire, "released", None)
        self._upstream: RealtimeTransport | None = None
        self._tasks: list[asyncio.Task] = []
        self._twilio_writer_task: asyncio.Task | None = None
        self._done = asyncio.Event()
        self._warned_unknown: set[str] = set()
        self.max_message_bytes = max_message_bytes
        self._close_code = 1000
        self._drops: dict[str, int] = {}  # peer → messages dropped since the last warning
        self._drop_warned_at: dict[str, float] = {}

    def now(self) -> float:
        return self._loop.time()

    @property
    def sid(self) -> str:
        return self.call.call_sid or "?"

    # --- Dispatch: the only place actions turn into I/O ---

    def dispatch(self, actions: list[Action], arrived: float | None = None) -> None:
        if arrived is None:
            arrived = self.now()
        batch: list[tuple[str | bytes, str]] = []  # carrier frames (text or bytes, kind), written together
        for action in actions:
            if isinstance(action, ToTwilio):
                message = action.message
                if self.recorder is not None:
                    self._record_sent(message, arrived)
                kind = _KINDS.get(type(message), "")
                for text in self.wire.encode(message, self.call.stream_sid or ""):
                    if self._lane is None:
                        self._enqueue(self._twilio_out, (text, arrived, kind), self.wire.label)
                    else:
                        batch.append((text, kind))
            elif isinstance(action, ToRealtime):
                self._to_realtime(self._serialize(action.command), arrived)
            elif isinstance(action, OpenRealtime):
                self._spawn(self._realtime_pump())
            elif isinstance(action, EndStream):
                log.info("call %s: ending stream: %s", self.sid, action.reason)
                if action.policy_violation:
                    self._close_code = POLICY_VIOLATION
                self._done.set()
            elif isinstance(action, Record):
                if action.kind == "start" and self.recordings is not None and self.call.profile.recording_enabled:
                    self.recorder = self.recordings.start(self.call.call_sid or "", self.call.stream_sid or "",
                                                          arrived)
                if self.on_record is not None:
                    self.on_record(self.call, action)
            elif isinstance(action, (HangUp, Transfer)):
                self._spawn(self._call_control(action))
            elif isinstance(action, RunTool):  # a task: the audio never waits for a tool
                self._spawn(self._run_tool(action))
        if batch:
            self._to_twilio(batch, arrived)

    def _record_sent(self, message: tw.TwilioMessage, now: float) -> None:
        """The agent's side of the recording is what Twilio plays: what it is sent, cut by a clear."""
        if type(message) is tw.SendMedia:
            self.recorder.tape.agent(message.payload, now)
        elif type(message) is tw.SendClear:
            self.recorder.tape.cleared(now)

    def _send_released(self, arrived: float) -> None:
        """Frames the wire releases on its own (Vonage: held audio, padded, once playout reached it)."""
        frames = self._wire_released()
        if not frames:
            return
        if self._lane is None:
            for frame in frames:
                self._enqueue(self._twilio_out, (frame, arrived, "media"), self.wire.label)
        else:
            self._to_twilio([(frame, "media") for frame in frames], arrived)

    def _to_twilio(self, batch: list[tuple[str | bytes, str]], arrived: float) -> None:
        # One write for a chunk and its mark: one syscall, one TCP segment, instead of two.
        if not self._lane.send_texts([text for text, _ in batch]):
            self._dropped("Twilio", len(batch))
            return
        now = self.now()
        for _, kind in batch:
            self.stats.twilio_out += 1
            self.observer.sent("twilio", kind, arrived, now)

    def _to_realtime(self, text: str, arrived: float) -> None:
        upstream = self._upstream
        if upstream is None:
            return  # between connections: the core resends what matters when one opens
        if upstream.send(text):
            self.stats.realtime_out += 1
            self.observer.sent("realtime", "", arrived, self.now())
        else:
            self._dropped("Realtime")

    def _enqueue(self, queue: asyncio.Queue, item: tuple[str, float, str], peer: str) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            self._dropped(peer)

    def _dropped(self, peer: str, count: int = 1) -> None:
        self._drops[peer] = self._drops.get(peer, 0) + count
        last = self._drop_warned_at.get(peer)
        if last is None or self.now() - last >= DROP_WARNING_EVERY_S:
            log.warning("call %s: %s is not reading; %d message(s) dropped", self.sid, peer,
                        self._drops[peer])
            self._drop_warned_at[peer] = self.now()
            self._drops[peer] = 0

    def end(self, reason: str) -> None:
        """Ends the call from outside (shutdown); Twilio speaks the fallback."""
        self.dispatch(self.call.end(reason))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    # --- Pumps ---

    async def run(self) -> None:
        """Serves the call until either side ends it; then closes both within a second."""
        reader = asyncio.create_task(self._twilio_reader())
        try:
            if self._lane is not None:
                self._lane.attach(self._on_twilio_message)  # the reader then sees only the end
            else:
                self._twilio_writer_task = self._spawn(self._twilio_writer())
            self._spawn(self._ticker())
            await self._done.wait()
        finally:
            reader.cancel()
            await self._shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _twilio_reader(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                self._on_twilio_message(payload(message))
        except WebSocketDisconnect:
            pass
        finally:
            if not self.call.ended:
                self.dispatch(self.call.on_twilio(tw.Stop(), self.now()))
            self._done.set()

    def _on_twilio_message(self, raw: str | bytes) -> None:
        arrived = self.now()
        self.stats.twilio_in += 1
        self.observer.received("twilio")
        if self.max_message_bytes is not None and len(raw) > self.max_message_bytes:
            log.warning("call %s: Twilio message of %d bytes is over the %d-byte limit; dropped",
                        self.sid, len(raw), self.max_message_bytes)
            return
        try:
            events = self.wire.parse(raw)
        except UnusedEvent:
            log.warning("call %s: %s event ignored: %.80s", self.sid, self.wire.label, raw)
            return
        except tw.TwilioProtocolError as exc:
            log.warning("call %s: bad %s message: %s", self.sid, self.wire.label, exc)
            return
        for event in events:
            if self.recorder is not None and type(event) is tw.Media and event.track in ("inbound", "inbound_track"):
                self.recorder.tape.caller(event.payload, event.timestamp_ms, arrived)
            self.dispatch(self.call.on_twilio(event, arrived), arrived)
        if self._wire_released is not None:
            self._send_released(arrived)

    async def _twilio_writer(self) -> None:
        while (item := await self._twilio_out.get()) is not None:
            if isinstance(item[0], bytes):
                await self.ws.send_bytes(item[0])
            else:
                await self.ws.send_text(item[0])
            self.stats.twilio_out += 1
            self.observer.sent("twilio", item[2], item[1], self.now())

    async def _realtime_pump(self) -> None:
        prepare, self.prepare = self.prepare, None
        try:
            if prepare is None:
                self._upstream = await self._connect()
            else:
                self._upstream, _ = await asyncio.gather(self._connect(), prepare(self.call))
        except Exception as exc:  # refused, timed out, rejected handshake
            log.error("call %s: cannot connect to Realtime: %s", self.sid, _describe(exc))
            self.dispatch(self.call.on_realtime_closed(f"connect failed: {_describe(exc)}"))
            return
        if self._done.is_set():  # the call ended while we were connecting: nobody else closes it
            upstream, self._upstream = self._upstream, None
            await _close_quietly(upstream)
            return
        self.dispatch(self.call.on_realtime_open(self.now()))
        reason = "closed by the provider"
        try:
            attach = getattr(self._upstream, "attach", None)
            if attach is not None:
                await attach(self._on_realtime_message)  # called per message; raises at the end
            else:
                while True:
                    self._on_realtime_message(await self._upstream.recv())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = _describe(exc)
        upstream, self._upstream = self._upstream, None
        await _close_quietly(upstream)
        self.dispatch(self.call.on_realtime_closed(reason, close_code=getattr(upstream, "close_code", None)))

    def _on_realtime_message(self, text: str) -> None:
        arrived = self.now()
        self.stats.realtime_in += 1
        self.observer.received("realtime")
        try:
            event = self.dialect.decode(text)
        except rt.RealtimeProtocolError as exc:
            log.warning("call %s: bad Realtime message: %s", self.sid, exc)
            return
        if isinstance(event, rt.Unknown) and event.type not in self._warned_unknown:
            self._warned_unknown.add(event.type)
            log.info("call %s: Realtime event %r not known to the %s dialect; ignored",
                     self.sid, event.type, self.dialect.name)
        self.dispatch(self.call.on_realtime(event, arrived), arrived)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self.now()
            self.dispatch(self.call.on_tick(now))
            if self.recorder is not None:
                self.recorder.tick(now)

    async def _connect(self) -> RealtimeTransport:
        """The upstream connection; the first time, the call's MCP servers are listed meanwhile, so
        the session is configured with their tools and the call waits for neither in turn. A
        server slow to list them holds the greeting at most MCP_DISCOVERY_DEADLINE_S: the session
        opens without its tools, and they are added when they come."""
        started = self._loop.time()
        discovery = asyncio.ensure_future(self.tools.discover())
        upstream = await self.connector()
        try:
            left = max(0.0, started + MCP_DISCOVERY_DEADLINE_S - self._loop.time())
            found = await asyncio.wait_for(asyncio.shield(discovery), left)
        except asyncio.TimeoutError:
            log.info("call %s: MCP tools not listed within %g s; the call starts without them",
                     self.sid, MCP_DISCOVERY_DEADLINE_S)
            self._spawn(self._add_late_tools(discovery))
            found = []
        self.dispatch(self.call.add_function_tools(found))  # nothing to send: the session is not open yet
        return upstream

    async def _add_late_tools(self, discovery: "asyncio.Future[list]") -> None:
        found = await discovery
        if found:  # the session is open by now: the core sends the tools (session.update)
            log.info("call %s: %d MCP tools listed late; added to the session", self.sid, len(found))
            self.dispatch(self.call.add_function_tools(found))

    async def _run_tool(self, action: RunTool) -> None:
        output, outcome = await self.tools.run(action)
        self.dispatch(self.call.on_tool_result(action.call_id, output, self.now(), outcome))

    async def _call_control(self, action: HangUp | Transfer) -> None:
        """Hang-up and transfer go through the carrier's REST API; the carrier then stops the stream."""
        sid = self.carrier_call_id or self.call.call_sid or ""
        if self.call_control is None:
            log.warning("call %s: %s needs the %s REST credentials; closing the stream "
                        "instead", self.sid, type(action).__name__, self.wire.label)
            self._done.set()
            return
        try:
            if isinstance(action, HangUp):
                log.info("call %s: hanging up: %s", self.sid, action.loggable)
                await self.call_control.hang_up(sid)
            else:
                log.info("call %s: transferring to %s%s", self.sid, action.number,
                         " (SIP REFER)" if action.refer else "")
                await self.call_control.transfer(sid, action.number, action.refer)
        except CarrierError as exc:
            log.error("call %s: %s refused %s (%s): %s", self.sid, self.wire.label, type(action).__name__,
                      exc.status, exc)
            if isinstance(action, HangUp):
                self._done.set()

    async def _shutdown(self) -> None:
        # Each side flushes what the core already decided to send, then closes, independently:
        # a stalled upstream must not delay the Twilio close (the fallback speaks on it).
        with contextlib.suppress(asyncio.QueueFull):
            self._twilio_out.put_nowait(None)
        await asyncio.gather(self._close_twilio(), self._close_realtime())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.tools.aclose()
        if self.recorder is not None:  # both sockets are closed: nothing more is heard
            recorder, self.recorder = self.recorder, None
            where = await recorder.close(self.now())
            if self.on_record is not None:
                self.on_record(self.call, Record("recording", {"url": where, "seconds": round(
                    recorder.tape.seconds, 3), "dropped_s": recorder.dropped_blocks}))

    async def _close_twilio(self) -> None:
        if self._twilio_writer_task is not None:
            await asyncio.wait([self._twilio_writer_task], timeout=CLOSE_TIMEOUT_S / 2)
            self._twilio_writer_task.cancel()
        if self.ws.client_state == WebSocketState.CONNECTED:
            try:
                # A caller's side that stopped reading never lets the close frame out.
                await asyncio.wait_for(self.ws.close(self._close_code), CLOSE_TIMEOUT_S / 2)
            except asyncio.TimeoutError:
                log.warning("call %s: Twilio is not reading; connection dropped", self.sid)
                if self._lane is not None:
                    self._lane.abort()
            except Exception:
                pass

    async def _close_realtime(self) -> None:
        # What the core sent is already written (sends are synchronous): close at once.
        if self._upstream is not None:
            await _close_quietly(self._upstream)


async def _close_quietly(upstream: RealtimeTransport) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(upstream.close(), CLOSE_TIMEOUT_S / 2)


_KINDS = {tw.SendMedia: "media", tw.SendMark: "mark", tw.SendClear: "clear"}


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


async def _nothing() -> None:
    return None
