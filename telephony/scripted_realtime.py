"""A scripted Realtime server for tests and benchmarks: real websockets, predictable behaviour.

It speaks the server side of the Realtime protocol closely enough for the bridge: it answers
``session.update``, runs an energy VAD over the appended caller audio (``speech_started`` /
``speech_stopped`` / ``committed``), answers each caller turn and each ``response.create``
with a tone (a different pitch per response, so tests can tell responses apart by FFT),
streams it faster than real time in chunks, honours ``response.cancel`` (after letting a
configurable number of deltas "in flight" slip out, as a real server does) and checks
``conversation.item.truncate`` against the audio it produced. Every client event it receives
and every server event it sends is kept for the tests to inspect.
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
    # Response number → (function name, JSON arguments) called after that response's audio.
    tool_calls: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Response number → its length in ms, where it differs from response_ms.
    response_lengths: dict[int, int] = field(default_factory=dict)


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
        self.transcription = "intent=transcription" in conn.path
        self.turn_audio = bytearray()
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
        if kind in ("session.update", "transcription_session.update"):
            session = event.get("session", {})
            fmt = session.get("input_audio_format") or (
                ((session.get("audio") or {}).get("input") or {}).get("format") or {})
            if fmt in ("g711_ulaw",) or (isinstance(fmt, dict) and fmt.get("type") == "audio/pcmu"):
                self.audio_format = "g711_ulaw"
            if kind == "transcription_session.update":
                await self.emit({"type": "transcription_session.updated", "session": {
                    "client_secret": {"value": "scripted", "expires_at": 0},
                    "input_audio_format": self.audio_format}})
            else:
                await self.emit({"type": "session.updated", "session": self._session()})
        elif kind == "input_audio_buffer.commit":
            if self.in_speech:
                await self._end_turn()
            else:
                await self._error("invalid_request_error", "input_audio_buffer_commit_empty",
                                  "Error committing input audio buffer: buffer too small.", event)
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
        if self.server.dialect == "ga" and self.transcription:
            return {"type": "transcription", "id": "sess_scripted", "object": "realtime.transcription_session"}
        if self.server.dialect == "ga":
            fmt = {"type": "audio/pcmu"} if self.audio_format == "g711_ulaw" else {"type": "audio/pcm", "rate": 24000}
            return {"type": "realtime", "id": "sess_scripted", "object": "realtime.session",
                    "audio": {"input": {"format": fmt}, "output": {"format": fmt}}}
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
                await self._end_turn()
        if self.in_speech:
            self.turn_audio += pcm

    async def _end_turn(self) -> None:
        """Speech stopped (or the client committed): the turn is committed and 'transcribed' —
        as the pitch of what was said, so tests can tell speakers apart."""
        self.in_speech = False
        item = self.speech_item or self.new_id("item")
        await self.emit({"type": "input_audio_buffer.speech_stopped",
                         "audio_end_ms": int(self.input_ms), "item_id": item})
        await self.emit({"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": item})
        await self.emit({"type": "conversation.item.input_audio_transcription.completed",
                         "item_id": item, "content_index": 0, "transcript": self._transcribe(),
                         "usage": {"type": "duration", "seconds": 1}})
        self.turn_audio = bytearray()
        if self.script.respond_to_turns and not self.transcription:
            self._start_response()

    def _transcribe(self) -> str:
        x = np.frombuffer(bytes(self.turn_audio), "<i2").astype(np.float64)
        if len(x) < 256:
            return "(a short sound)"
        rate = 8000 if self.audio_format == "g711_ulaw" else 24000
        peak = np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * rate / len(x)
        return f"a {round(peak / 10) * 10:.0f} Hz tone for {len(x) / rate:.1f} s"

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
        length = self.script.response_lengths.get(n, self.script.response_ms)
        while sent_ms < length:
            if rid in self.cancelled:
                if after_cancel >= self.script.deltas_after_cancel:
                    status = "cancelled"
                    break
                after_cancel += 1
            chunk_ms = min(self.script.chunk_ms, length - sent_ms)
            audio = self.tone(n, chunk_ms, sent_ms)
            sent_ms += chunk_ms
            self.item_audio_ms[item] = sent_ms
            await self.emit({"type": self.names["audio.delta"], **base,
                             "delta": base64.b64encode(audio).decode()})
            await self.emit({"type": self.names["transcript.delta"], **base,
                             "delta": words[int(len(words) * (sent_ms - chunk_ms) / length):
                                            int(len(words) * sent_ms / length)]})
            await asyncio.sleep(chunk_ms / 1000 / self.script.speed)
        output = [{"id": item, "object": "realtime.item", "type": "message", "role": "assistant",
                   "status": "completed" if status == "completed" else "incomplete", "content": []}]
        if status == "completed":
            await self.emit({"type": self.names["audio.done"], **base})
            await self.emit({"type": self.names["transcript.done"], **base, "transcript": words})
            if n in self.script.tool_calls:
                output.append(await self._call_tool(rid, *self.script.tool_calls[n]))
        self.response_id = None
        await self.emit({"type": "response.done", "response": {
            "id": rid, "object": "realtime.response", "status": status,
            "output": output,
            "usage": {"total_tokens": 10, "input_tokens": 4, "output_tokens": 6}}})


    async def _call_tool(self, rid: str, name: str, arguments: str) -> dict[str, Any]:
        item, call_id = self.new_id("item"), self.new_id("call")
        fc = {"id": item, "object": "realtime.item", "type": "function_call", "status": "completed",
              "name": name, "call_id": call_id, "arguments": arguments}
        await self.emit({"type": "response.output_item.added", "response_id": rid, "output_index": 1,
                         "item": {**fc, "status": "in_progress", "arguments": ""}})
        done = {"type": "response.function_call_arguments.done", "response_id": rid, "item_id": item,
                "output_index": 1, "call_id": call_id, "arguments": arguments}
        if self.server.dialect == "ga":
            done["name"] = name  # GA names the function here; beta only in the item
        await self.emit(done)
        return fc


class ScriptedRealtimeServer:
    """``async with ScriptedRealtimeServer() as server:`` → ``server.url`` to point the bridge at."""

    def __init__(self, script: Script | None = None, dialect: str = "beta", host: str = "127.0.0.1") -> None:
        self.script = script or Script()
        self.dialect = dialect
        self.host = host
        self.connections: list[Connection] = []
        self._server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    async def __aenter__(self) -> "ScriptedRealtimeServer":
        self._server = await serve(self._serve, self.host, 0, max_size=2**24, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, ws: ServerConnection) -> None:
        conn = Connection(headers={k.lower(): v for k, v in ws.request.headers.raw_items()},
                          path=ws.request.path)
        self.connections.append(conn)
        session = _Session(self, ws, conn)
        try:
            await session.emit({"type": "session.created", "session": session._session()})
            async for message in ws:
                event = json.loads(message)
                conn.received.append(event)
                await session.handle(event)
        except websockets.ConnectionClosed:
            pass
        finally:
            conn.closed = True
            if session.response_task:
                session.response_task.cancel()
