"""A scripted Realtime server for tests and benchmarks: real websockets, predictable behaviour.

It speaks the server side of the Realtime protocol closely enough for the bridge: it answers
``session.update``, runs an energy VAD over the appended caller audio (``speech_started`` /
``speech_stopped`` / ``committed``), answers each caller turn and each ``response.create``
with a tone (a different pitch per response, so tests can tell responses apart by FFT),
streams it faster than real time in chunks, honours ``response.cancel`` (after letting a
configurable number of deltas "in flight" slip out, as a real server does) and checks
``conversation.item.truncate`` against the audio it produced. Every client event it receives
and every server event it sends is kept for the tests to inspect. Fault knobs in ``Script``
make it refuse or stall the handshake, stop reading mid-call, drop the TCP connection, or send
raw (malformed, unknown, error) events.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import audioop
except ImportError:  # pragma: no cover
    raise

import websockets
from websockets.asyncio.server import ServerConnection, serve

BETA_NAMES = {"audio.delta": "response.audio.delta", "audio.done": "response.audio.done",
              "transcript.delta": "response.audio_transcript.delta",
              "transcript.done": "response.audio_transcript.done"}
GA_NAMES = {"audio.delta": "response.output_audio.delta", "audio.done": "response.output_audio.done",
            "transcript.delta": "response.output_audio_transcript.delta",
            "transcript.done": "response.output_audio_transcript.done"}


@dataclass
class Script:
    """What the server does; tests adjust these."""

    response_ms: int = 3000  # length of each spoken response
    chunk_ms: int = 100  # audio per delta
    speed: float = 5.0  # how much faster than real time deltas are sent
    frequencies: tuple[float, ...] = (440.0, 660.0, 880.0, 550.0)
    amplitude: int = 8000
    vad_threshold_rms: float = 400.0  # in PCM16 units, on the caller's audio
    silence_ms: int = 300  # quiet this long ends a caller turn
    respond_to_turns: bool = True
    deltas_after_cancel: int = 2  # already "in flight" when a cancel arrives
    auto_interrupt: bool = True  # speech_started cancels the response, like interrupt_response
    # Faults, for resilience tests. Counts are client messages received on one connection.
    reject_status: int | None = None  # answer the handshake with this HTTP status
    handshake_delay_s: float = 0.0  # sit on the handshake this long (a stalled upstream)
    stall_after: int | None = None  # then stop reading and answering, socket left open
    drop_after: int | None = None  # then drop the TCP connection without a close frame
    drop_connections: int = 1  # how many connections (the first ones) drop_after applies to
    inject: tuple[tuple[int, str], ...] = ()  # (after n client messages, raw text to send)


@dataclass
class Connection:
    """One bridge connection as the server saw it."""

    headers: dict[str, str]
    path: str
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def received_types(self) -> list[str]:
        return [e.get("type", "") for e in self.received]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]


class _Session:
    """The server side of one connection."""

    def __init__(self, server: "ScriptedRealtimeServer", ws: ServerConnection, conn: Connection) -> None:
        self.server, self.ws, self.conn, self.script = server, ws, conn, server.script
        self.names = GA_NAMES if server.dialect == "ga" else BETA_NAMES
        self.audio_format = "pcm16"
        self.ids = itertools.count(1)
        self.input_ms = 0.0
        self.in_speech = False
        self.quiet_ms = 0.0
        self.speech_item: str | None = None
        self.response_task: asyncio.Task | None = None
        self.response_id: str | None = None
        self.cancelled: set[str] = set()
        self.item_audio_ms: dict[str, float] = {}
        self.n_responses = 0

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids):04d}"

    async def emit(self, event: dict[str, Any]) -> None:
        event = {"event_id": self.new_id("event"), **event}
        self.conn.sent.append(event)
        await self.ws.send(json.dumps(event))

    # --- client events ---

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.update":
            session = event.get("session", {})
            fmt = session.get("input_audio_format") or (
                ((session.get("audio") or {}).get("input") or {}).get("format") or {})
            if fmt in ("g711_ulaw",) or (isinstance(fmt, dict) and fmt.get("type") == "audio/pcmu"):
                self.audio_format = "g711_ulaw"
            await self.emit({"type": "session.updated", "session": self._session()})
        elif kind == "input_audio_buffer.append":
            await self._on_audio(base64.b64decode(event.get("audio", "")))
        elif kind == "response.create":
            self._start_response()
        elif kind == "response.cancel":
            if self.response_id and self.response_id not in self.cancelled:
                self.cancelled.add(self.response_id)
            else:
                await self._error("invalid_request_error", "response_cancel_not_active",
                                  "Cancellation failed: no active response found", event)
        elif kind == "conversation.item.truncate":
            item, end = event.get("item_id"), event.get("audio_end_ms", 0)
            produced = self.item_audio_ms.get(item)
            if produced is None:
                await self._error("invalid_request_error", "item_not_found", f"Item {item} not found", event)
            elif end > produced + 1e-6:
                await self._error("invalid_request_error", "invalid_value",
                                  f"audio_end_ms {end} is beyond the item's audio ({produced:.0f} ms)", event)
            else:
                await self.emit({"type": "conversation.item.truncated", "item_id": item,
                                 "content_index": 0, "audio_end_ms": end})
        elif kind == "conversation.item.create":
            item = dict(event.get("item") or {})
            item.setdefault("id", self.new_id("item"))
            await self.emit({"type": "conversation.item.created", "previous_item_id": None, "item": item})

    async def _error(self, type_: str, code: str, message: str, culprit: dict[str, Any]) -> None:
        await self.emit({"type": "error", "error": {"type": type_, "code": code, "message": message,
                                                     "param": None, "event_id": culprit.get("event_id")}})

    def _session(self) -> dict[str, Any]:
        return {"id": "sess_scripted", "object": "realtime.session",
                "input_audio_format": self.audio_format, "output_audio_format": self.audio_format}

    # --- VAD over caller audio ---

    async def _on_audio(self, raw: bytes) -> None:
        pcm = audioop.ulaw2lin(raw, 2) if self.audio_format == "g711_ulaw" else raw
        rate = 8000 if self.audio_format == "g711_ulaw" else 24000
        ms = len(pcm) / 2 / rate * 1000
        rms = audioop.rms(pcm, 2) if pcm else 0
        start_ms = self.input_ms
        self.input_ms += ms
        if rms >= self.script.vad_threshold_rms:
            self.quiet_ms = 0.0
            if not self.in_speech:
                self.in_speech = True
                self.speech_item = self.new_id("item")
                await self.emit({"type": "input_audio_buffer.speech_started",
                                 "audio_start_ms": int(start_ms), "item_id": self.speech_item})
                if self.script.auto_interrupt and self.response_id and self.response_id not in self.cancelled:
                    self.cancelled.add(self.response_id)
        elif self.in_speech:
            self.quiet_ms += ms
            if self.quiet_ms >= self.script.silence_ms:
                self.in_speech = False
                item = self.speech_item or self.new_id("item")
                await self.emit({"type": "input_audio_buffer.speech_stopped",
                                 "audio_end_ms": int(self.input_ms), "item_id": item})
                await self.emit({"type": "input_audio_buffer.committed", "previous_item_id": None,
                                 "item_id": item})
                await self.emit({"type": "conversation.item.input_audio_transcription.completed",
                                 "item_id": item, "content_index": 0,
                                 "transcript": "(scripted caller turn)",
                                 "usage": {"type": "duration", "seconds": 1}})
                if self.script.respond_to_turns:
                    self._start_response()

    # --- responses ---

    def _start_response(self) -> None:
        if self.response_task and not self.response_task.done():
            return  # one at a time, like the real service
        self.response_task = asyncio.create_task(self._respond())

    def tone(self, n: int, ms: float, offset_ms: float) -> bytes:
        freq = self.script.frequencies[n % len(self.script.frequencies)]
        rate = 8000 if self.audio_format == "g711_ulaw" else 24000
        start = int(offset_ms * rate / 1000)
        t = (np.arange(int(ms * rate / 1000)) + start) / rate
        pcm = (self.script.amplitude * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()
        return audioop.lin2ulaw(pcm, 2) if self.audio_format == "g711_ulaw" else pcm

    async def _respond(self) -> None:
        n = self.n_responses
        self.n_responses += 1
        rid, item = self.new_id("resp"), self.new_id("item")
        self.response_id = rid
        self.item_audio_ms[item] = 0.0
        base = {"response_id": rid, "item_id": item, "output_index": 0, "content_index": 0}
        await self.emit({"type": "response.created", "response": {
            "id": rid, "object": "realtime.response", "status": "in_progress", "output": []}})
        await self.emit({"type": "response.output_item.added", "response_id": rid, "output_index": 0,
                         "item": {"id": item, "object": "realtime.item", "type": "message",
                                  "role": "assistant", "status": "in_progress", "content": []}})
        words = f"Scripted response number {n + 1}, a tone of {self.script.frequencies[n % 4]:.0f} hertz."
        status, after_cancel, sent_ms = "completed", 0, 0.0
        while sent_ms < self.script.response_ms:
            if rid in self.cancelled:
                if after_cancel >= self.script.deltas_after_cancel:
                    status = "cancelled"
                    break
                after_cancel += 1
            chunk_ms = min(self.script.chunk_ms, self.script.response_ms - sent_ms)
            audio = self.tone(n, chunk_ms, sent_ms)
            sent_ms += chunk_ms
            self.item_audio_ms[item] = sent_ms
            await self.emit({"type": self.names["audio.delta"], **base,
                             "delta": base64.b64encode(audio).decode()})
            await self.emit({"type": self.names["transcript.delta"], **base,
                             "delta": words[int(len(words) * (sent_ms - chunk_ms) / self.script.response_ms):
                                            int(len(words) * sent_ms / self.script.response_ms)]})
            await asyncio.sleep(chunk_ms / 1000 / self.script.speed)
        if status == "completed":
            await self.emit({"type": self.names["audio.done"], **base})
            await self.emit({"type": self.names["transcript.done"], **base, "transcript": words})
        self.response_id = None
        await self.emit({"type": "response.done", "response": {
            "id": rid, "object": "realtime.response", "status": status,
            "output": [{"id": item, "object": "realtime.item", "type": "message", "role": "assistant",
                        "status": "completed" if status == "completed" else "incomplete"}],
            "usage": {"total_tokens": 10, "input_tokens": 4, "output_tokens": 6}}})


class ScriptedRealtimeServer:
    """``async with ScriptedRealtimeServer() as server:`` → ``server.url`` to point the bridge at."""

    def __init__(self, script: Script | None = None, dialect: str = "beta", host: str = "127.0.0.1",
                 keep_connections: bool = True) -> None:
        """``keep_connections=False`` forgets each connection when it closes (soak runs)."""
        self.script = script or Script()
        self.keep_connections = keep_connections
        self.served = 0
        self.dialect = dialect
        self.host = host
        self.connections: list[Connection] = []
        self._server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    async def __aenter__(self) -> "ScriptedRealtimeServer":
        self._closing = asyncio.Event()
        self._server = await serve(self._serve, self.host, 0, max_size=2**24, compression=None,
                                   process_request=self._handshake)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()  # releases stalled handlers
        self._server.close()
        await self._server.wait_closed()

    async def _handshake(self, ws: ServerConnection, request: Any) -> Any:
        if self.script.handshake_delay_s:
            try:
                await asyncio.wait_for(self._closing.wait(), self.script.handshake_delay_s)
            except asyncio.TimeoutError:
                pass
        if self.script.reject_status:
            return ws.respond(self.script.reject_status, "scripted refusal\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        conn = Connection(headers={k.lower(): v for k, v in ws.request.headers.raw_items()},
                          path=ws.request.path)
        self.connections.append(conn)
        index = len(self.connections) - 1
        script = self.script
        session = _Session(self, ws, conn)
        inject = sorted(script.inject)
        try:
            await session.emit({"type": "session.created", "session": session._session()})
            async for message in ws:
                event = json.loads(message)
                conn.received.append(event)
                await session.handle(event)
                n = len(conn.received)
                while inject and inject[0][0] <= n:
                    await ws.send(inject.pop(0)[1])
                if script.drop_after is not None and n >= script.drop_after \
                        and index < script.drop_connections:
                    ws.transport.abort()  # as a network fault: no close frame
                    break
                if script.stall_after is not None and n >= script.stall_after:
                    await self._closing.wait()  # neither reads nor answers from now on
                    ws.transport.abort()  # it never read the client's close frame either
                    break
        except websockets.ConnectionClosed:
            pass
        finally:
            conn.closed = True
            self.served += 1
            if session.response_task:
                session.response_task.cancel()
                await asyncio.gather(session.response_task, return_exceptions=True)
            if not self.keep_connections:
                self.connections.remove(conn)
