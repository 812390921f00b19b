"""A scripted Realtime server for tests and benchmarks: real websockets, predictable behaviour.

A thin configuration of the local engine (``local_engine``): the same protocol, VAD, cancel
and truncate handling, but every response is a tone (a different pitch per response, so tests
can tell responses apart by FFT) of a fixed length, the VAD has one threshold and a fixed
end-of-turn silence, and a configurable number of deltas "in flight" slip out after a cancel,
as a real server's do. Like the real service it honours the session's ``create_response`` and
``interrupt_response``, refuses a truncate of an item none of which was played, and deletes
items (``conversation.item.delete``). Every client event it receives and every server event it sends is kept
for the tests to inspect. Fault knobs in ``Script``
make it refuse or stall the handshake, stop reading mid-call, drop the TCP connection, or send
raw (malformed, unknown, error) events.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve

from telephony.offline.local_engine import (
    BETA_NAMES,
    GA_NAMES,
    EngineConfig,
    RealtimeEngine,
    Utterance,
)
from telephony.offline.local_realtime import ServedSession, run_session
from telephony.offline.voices import RATE

__all__ = ["BETA_NAMES", "GA_NAMES", "Connection", "Script", "ScriptedRealtimeServer", "TonePersona"]


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
    # None: as the session's turn_detection says (create_response / interrupt_response, both true
    # unless the client says false), like the real service; True or False overrides the session.
    respond_to_turns: bool | None = None
    deltas_after_cancel: int = 2  # already "in flight" when a cancel arrives
    auto_interrupt: bool | None = None  # speech_started cancels the response in progress
    # Refuse a truncate at 0 ms (none of the item played) as the real service does: the client
    # must delete the item instead. False: accept it (a lenient server).
    refuse_unplayed_truncate: bool = True
    # Faults, for resilience tests. Counts are client messages received on one connection.
    reject_status: int | None = None  # answer the handshake with this HTTP status
    handshake_delay_s: float = 0.0  # sit on the handshake this long (a stalled upstream)
    stall_after: int | None = None  # then stop reading and answering, socket left open
    drop_after: int | None = None  # then drop the TCP connection without a close frame
    drop_connections: int = 1  # how many connections (the first ones) drop_after applies to
    inject: tuple[tuple[int, str], ...] = ()  # (after n client messages, raw text to send)
    # Answer a beta-shaped session (header OpenAI-Beta) as api.openai.com does since May 2026:
    # an error beta_api_shape_disabled, then a close 4000 (PROTOCOLS.md, "Realtime beta shutdown").
    beta_retired: bool = False

    # Response number → (function name, JSON arguments) called after that response's audio.
    tool_calls: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Response number → its length in ms, where it differs from response_ms.
    response_lengths: dict[int, int] = field(default_factory=dict)
    # Caller turn number → its transcript ("" for a noise with no words; None: no transcript event
    # at all). Turns past these are "transcribed" as their pitch.
    caller_transcripts: tuple[str | None, ...] = ()

    def engine_config(self, dialect: str, transcription: bool = False) -> EngineConfig:
        return EngineConfig(chunk_ms=self.chunk_ms, speed=self.speed, vad_start_rms=self.vad_threshold_rms,
                            vad_stop_rms=self.vad_threshold_rms, silence_ms=self.silence_ms,
                            deltas_after_cancel=self.deltas_after_cancel, interrupt=self.auto_interrupt,
                            respond_to_turns=self.respond_to_turns, transcribe_turns=True, dialect=dialect,
                            transcription=transcription, refuse_unplayed_truncate=self.refuse_unplayed_truncate)


class TonePersona:
    """Response ``n`` is a tone at ``frequencies[n % len]``; a caller's turn is "transcribed" as
    its pitch, so tests can tell speakers and responses apart."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self._turns = 0

    def utterance(self, n: int, instructions: str | None, caller_turn: bytes | None) -> Utterance:
        freq = self.script.frequencies[n % len(self.script.frequencies)]
        ms = self.script.response_lengths.get(n, self.script.response_ms)
        t = np.arange(int(ms * RATE / 1000)) / RATE
        pcm = (self.script.amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()
        return Utterance(f"Scripted response number {n + 1}, a tone of {freq:.0f} hertz.", pcm,
                         self.script.tool_calls.get(n))

    def transcribe(self, turn: bytes, rate: int) -> str | None:
        n, self._turns = self._turns, self._turns + 1
        if n < len(self.script.caller_transcripts):
            return self.script.caller_transcripts[n]
        x = np.frombuffer(turn, "<i2").astype(np.float64)
        if len(x) < 256:
            return "(a short sound)"
        peak = np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * rate / len(x)
        return f"a {round(peak / 10) * 10:.0f} Hz tone for {len(x) / rate:.1f} s"


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

    def observe(self, direction: str, event: dict[str, Any]) -> None:
        (self.received if direction == "client" else self.sent).append(event)


BETA_RETIRED_ERROR = {
    "type": "error", "event_id": "event_retired",
    "error": {"type": "invalid_request_error", "code": "beta_api_shape_disabled",
              "message": "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
              "param": None, "event_id": None}}


async def _refuse_beta_shape(ws: ServerConnection, conn: Connection) -> None:
    conn.observe("server", BETA_RETIRED_ERROR)
    await ws.send(json.dumps(BETA_RETIRED_ERROR))
    await ws.close(4000, "invalid_request_error.beta_api_shape_disabled")


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
        config = self.script.engine_config(self.dialect, transcription="intent=transcription" in conn.path)
        engine = RealtimeEngine(TonePersona(self.script), config, "sess_scripted")
        try:
            await self._run(ws, engine, conn, index)
        finally:
            conn.closed = True
            self.served += 1
            if not self.keep_connections:
                self.connections.remove(conn)

    async def _run(self, ws: ServerConnection, engine: RealtimeEngine, conn: Connection, index: int) -> None:
        """``run_session`` with the script's faults: injected raw events, drops and stalls."""
        script, inject = self.script, sorted(self.script.inject)
        if script.beta_retired and "openai-beta" in conn.headers:
            await _refuse_beta_shape(ws, conn)
            return

        async def faults(n: int, session: ServedSession) -> bool:
            while inject and inject[0][0] <= n:
                session.send_raw(inject.pop(0)[1])
            if script.drop_after is not None and n >= script.drop_after and index < script.drop_connections:
                ws.transport.abort()  # as a network fault: no close frame
                return True
            if script.stall_after is not None and n >= script.stall_after:
                session.go_silent()
                await self._closing.wait()  # neither reads nor answers from now on
                ws.transport.abort()  # it never read the client's close frame either
                return True
            return False

        await run_session(ws, engine, conn.observe, faults)
