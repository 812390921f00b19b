"""OpenAI's GPT-Live SIP side with the local engine serving the call: ``simulate --sip --engine live``.

``LocalLiveSipPeer`` is the Live SIP side of ``live_sip_peer`` (the signed
``live.transport.incoming`` webhook, ``/v1/live/sessions/{id}/accept|reject|refer|hangup``, the
``/attach`` sideband, every client message checked against the openai package's Live models) where
the call is real: the accept starts the local engine's Live session (as OpenAI's accept does: the
service sends no ``session.start``), the caller's recording goes in as the SIP audio at real time,
and the engine's audio is played out on the line, which is what the caller hears. The sideband
carries what a Live sideband carries: ``session.started`` on each attach, the caller's audio
reflected (``session.input_audio.append``), the agent's reflected as it is played
(``session.output_audio.delta`` with ``start_ms``/``end_ms`` on the session clock, ms since the
accept), transcript deltas, keypad digits (``transport.dtmf.received``), delegated function calls
(``response.event``), and ``session.closed`` at the end: ``remote_hangup`` when the caller hangs
up, ``close_requested`` after the service's hang-up or refer. Both sides are kept for a stereo WAV.
Facts: ../shared/PROTOCOLS.md, "GPT-Live over SIP".
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import ValidationError

from telephony.offline.live_sip_peer import LiveSession, LiveSipSide, _eid
from telephony.offline.local_engine import EngineConfig, Persona, RealtimeEngine
from telephony.offline.local_realtime import EngineRunner
from telephony.offline.openai_side import FRAME_BYTES, FRAME_MS, run_line

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

log = logging.getLogger("telephony.local_live_sip")

REFLECT_MS = 100  # audio per reflection, each way (PCM16 24 kHz on the sideband)
PACKET_BYTES = REFLECT_MS // FRAME_MS * FRAME_BYTES
# A burst of agent audio starts playing this many frames after it arrives: the jitter buffer that
# keeps a real-time engine's next chunk from arriving just after the frame that needed it.
JITTER_FRAMES = 2
_SIP_FORMAT = {"type": "audio/pcmu", "rate": 8000}  # what SIP negotiated: the accept names no format


def start_session(accepted: dict[str, Any]) -> dict[str, Any]:
    """The accepted session as the engine's ``session.start``: the accept's own fields, with the
    format the SIP leg negotiated (the accept may not name one)."""
    audio = accepted.get("audio") or {}
    session = {"model": accepted["model"], "instructions": accepted.get("instructions") or "",
               "audio": {"format": _SIP_FORMAT, "output": audio.get("output") or {}}}
    if accepted.get("delegation"):
        session["delegation"] = accepted["delegation"]
    return session


class Reflector:
    """μ-law 8 kHz from the line → the sideband's mono PCM16 at 24 kHz: three samples for each,
    interpolated from the one before (kept across chunks), so a chunk's length is its duration."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, ulaw: bytes) -> str:
        x = np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2").astype(np.float64)
        before = np.concatenate(([self._last], x[:-1]))
        self._last = float(x[-1]) if len(x) else self._last
        steps = np.array([1, 2, 3]) / 3
        pcm = (before[:, None] + (x - before)[:, None] * steps).round().astype("<i2")
        return base64.b64encode(pcm.tobytes()).decode()


class LiveLine:
    """One accepted session: the engine, the SIP leg's clock, and what goes to the sideband."""

    def __init__(self, side: LocalLiveSipPeer, s: LiveSession) -> None:
        self.side, self.s = side, s
        # Real time, not ahead of it: the engine then speaks while the line plays, so its own
        # decision to stop talking over the caller happens while the caller still hears it.
        config = replace(side.engine_config, dialect="live", speed=1.0, speak_on_instructions=True)
        self.engine = RealtimeEngine(side.persona, config, s.session_id)
        self.resource: dict[str, Any] | None = None  # the session, as session.started describes it
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # one sender: events stay in order
        self._playout = bytearray()  # agent audio not played yet
        self._packet = bytearray()  # the reflected chunk being played
        self._hold = JITTER_FRAMES
        self._interruptions = 0
        self._heard = bytearray()  # caller audio not reflected yet
        self._reflect_in, self._reflect_out = Reflector(), Reflector()
        self.runner = EngineRunner(self.engine, self._from_engine)
        self.runner.feed(json.dumps({"type": "session.start", "session": start_session(s.accepted or {})}))
        self._sender = asyncio.create_task(self._send_all())
        s.play = asyncio.create_task(self._run())

    # --- The engine's events: audio to the line, the rest to the sideband ---

    def _from_engine(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.started":  # sent on each attach
            self.resource = {**event["session"], "expires_at": int(time.time()) + 3600}
        elif kind == "session.output_audio.delta":  # reflected as it is played, not as it is made
            self._playout += base64.b64decode(event["delta"])
        elif kind == "session.closed":
            asyncio.get_running_loop().create_task(self.side._close(self.s, "close_requested"))
        else:
            self._outbox.put_nowait(event)

    async def _send_all(self) -> None:
        while True:
            event = await self._outbox.get()
            try:
                await self.side._send(self.s, event)
            except ValidationError as exc:  # a shape the package does not know: kept for the tests
                log.error("session %s: not sent, the package's models refuse %s: %s", self.s.session_id,
                          event.get("type"), exc.errors()[0].get("msg"))
                self.s.unsent.append(f"{event.get('type')}: {exc}")

    # --- The line: 20 ms frames each way ---

    async def _run(self) -> None:
        side = self.side
        await run_line(side.caller_audio, side.dtmf, side.listen_s, self.s.ended, self.s.caller, self.s.agent,
                       hear=self._hear, press=self._press, play=self._play)
        await side._close(self.s, "remote_hangup")  # the caller's recording and listen time are over

    def _hear(self, frame: bytes, n: int) -> None:
        self.runner.feed(json.dumps({"type": "session.input_audio.append", "audio": base64.b64encode(frame).decode()}))
        if self.engine.interruptions != self._interruptions:  # it stopped talking over the caller:
            self._interruptions = self.engine.interruptions  # so does the line, queued audio and all
            self._playout.clear()
            self._packet.clear()
        self._heard += frame
        if len(self._heard) >= PACKET_BYTES:
            audio = self._reflect_in(bytes(self._heard))
            self._outbox.put_nowait({"type": "session.input_audio.append", "audio": audio})
            self._heard.clear()

    def _press(self, digit: str) -> None:
        self._outbox.put_nowait({"type": "transport.dtmf.received", "event_id": _eid(), "event": digit})

    def _play(self, n: int) -> bytes:
        """Frame ``n`` of the agent's audio; each chunk is reflected as it starts playing."""
        if not self._packet:
            if not self._playout:
                self._hold = JITTER_FRAMES
                return b""
            if self._hold > 0:
                self._hold -= 1
                return b""
            self._packet = self._playout[:PACKET_BYTES]
            del self._playout[:PACKET_BYTES]
            start, audio = n * FRAME_MS, self._reflect_out(bytes(self._packet))
            self._outbox.put_nowait({"type": "session.output_audio.delta", "delta": audio, "start_ms": start,
                                     "end_ms": start + len(self._packet) * FRAME_MS // FRAME_BYTES})
        frame = bytes(self._packet[:FRAME_BYTES])
        del self._packet[:FRAME_BYTES]
        return frame

    def close(self) -> None:
        self.runner.close()
        self._sender.cancel()


class LocalLiveSipPeer(LiveSipSide):
    """``async with LocalLiveSipPeer(persona, caller_audio=…) as peer:`` → ``peer.base_url`` for
    OPENAI_BASE_URL; ``await peer.ring(url, sip_headers)``, then the session's ``ended``.
    ``caller_audio``: μ-law 8 kHz, from the accept on; ``dtmf``: (seconds, key) pressed on the
    line; ``listen_s``: the caller stays this long after their recording, then hangs up."""

    def __init__(self, persona: Persona, engine_config: EngineConfig | None = None, *, caller_audio: bytes = b"",
                 dtmf: tuple[tuple[float, str], ...] = (), listen_s: float = 4.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.persona, self.engine_config = persona, engine_config or EngineConfig()
        self.caller_audio, self.dtmf, self.listen_s = caller_audio, dtmf, listen_s
        self.lines: dict[str, LiveLine] = {}

    def _accepted(self, s: LiveSession) -> None:
        self.lines[s.session_id] = LiveLine(self, s)

    def _resource(self, s: LiveSession) -> dict[str, Any]:
        line = self.lines.get(s.session_id)
        return line.resource if line is not None and line.resource else super()._resource(s)

    def _client(self, s: LiveSession, text: str) -> None:
        line = self.lines.get(s.session_id)
        if line is not None and not s.ended.is_set():
            line.runner.feed(text)

    def _ending(self, s: LiveSession) -> None:
        line = self.lines.get(s.session_id)
        if line is not None:
            line.close()
