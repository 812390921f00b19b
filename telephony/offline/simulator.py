"""A simulated phone caller on a carrier's media websocket; Twilio's Media Streams here.

``CallSimulator`` is the carrier-neutral part: one 20 ms μ-law caller frame every 20 ms at real
time, the agent's audio played back at real time from a buffer (a mark, or a carrier's
checkpoint, is echoed when playback reaches it; a clear drops the buffer), and both tracks
recorded frame by frame on one clock, so what the caller said and what the caller heard line up
in time. A carrier's subclass says what goes on the wire: its opening messages, its media
frames, its echoes, its hang-up, and what each message it receives means. Twilio's is
``TwilioCallSimulator`` below; the other carriers' are in ``telephony/offline/callers/``.

Twilio: ``connected`` and ``start`` (with the TwiML's ``<Parameter>``s), then ``media`` frames
timestamped like Twilio's; a ``mark`` is echoed when played, and ``clear`` echoes every pending
mark at once, as Twilio does; ``stop`` at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import websockets

FRAME_MS = 20
FRAME_BYTES = 160  # μ-law 8 kHz
ULAW_SILENCE = b"\xff"


@dataclass
class TimelineEntry:
    t: float  # seconds since the stream started
    kind: str  # "clear", "mark", "agent_audio_start", "agent_audio_stop", "caller_done"…
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CallResult:
    caller: bytes  # μ-law, what was sent, one byte per 1/8000 s
    agent: bytes  # μ-law, what was played, same clock
    timeline: list[TimelineEntry]
    marks_echoed: list[str]
    marks_echoed_by_clear: list[str]
    clears: list[float]  # seconds since start
    received: list[dict[str, Any]]  # every message the bridge sent (payloads elided)
    close_code: int | None = None
    closed_by_bridge_at: float | None = None  # seconds since start, when the bridge hung up first
    # The agent's bytes exactly as played, in order, without the silence that fills a frame the
    # buffer could not: what the caller heard, to compare with what the agent said.
    played: bytes = b""


# Checks one message the bridge sent (and the stream's sid); raises when the carrier would reject it.
MessageValidator = Callable[[dict[str, Any], str], None]


class CarrierProtocolError(RuntimeError):
    """The bridge sent what the carrier would refuse (ends the simulated call, out of ``run()``)."""


@dataclass(frozen=True)
class Audio:
    """Agent audio to queue for playback (μ-law 8 kHz, whatever the carrier's codec on the wire)."""
    ulaw: bytes


@dataclass(frozen=True)
class Mark:
    """A position to echo once the audio queued before it has played (Twilio's mark, Plivo's checkpoint)."""
    name: str


@dataclass(frozen=True)
class Clear:
    """Drop the queued audio (barge-in)."""


Action = Audio | Mark | Clear | None  # None: a message with nothing to play (kept in ``received``)
Frame = str | bytes  # one websocket message


class CallSimulator:
    """The carrier-neutral caller: pacing, playout, recording. Subclasses speak a carrier's wire."""

    carrier: ClassVar[str] = "carrier"  # the name the console shows
    label: ClassVar[str] = "the carrier"  # the same, in a sentence
    # Twilio, Telnyx and SignalWire return the marks pending at a clear; Plivo does not (its
    # checkpoints are "only emitted if the preceding events were played successfully").
    clear_echoes_marks: ClassVar[bool] = True
    # Used when no ``validate`` is given: tests set it so that every simulated call checks the
    # bridge's messages against the carrier's documented shapes.
    default_validate: ClassVar[MessageValidator | None] = None

    def __init__(self, url: str, *, caller_audio: bytes = b"", call_sid: str | None = None,
                 custom_parameters: dict[str, str] | None = None, duration_s: float | None = None,
                 hang_up: bool = True, extra_messages: list[tuple[float, str]] | None = None,
                 outbound_audio: bytes | None = None, hang_up_when_quiet_s: float | None = None,
                 before_start: list[str] | None = None,
                 media_format: dict[str, Any] | None = None,
                 validate: MessageValidator | None = None,
                 from_number: str = "+15550100001", to_number: str = "+15550100002") -> None:
        """``caller_audio``: μ-law 8 kHz; silence is sent after it until ``duration_s``.

        ``outbound_audio``: makes this a one-way ``both_tracks`` fork (as ``<Start><Stream>``):
        the caller's audio goes as the ``inbound`` track and this as the ``outbound`` track.

        ``hang_up_when_quiet_s``: hang up earlier, once the caller's audio is over and the agent,
        having spoken since, has been quiet this long (a caller who got their answer).

        ``extra_messages``: (seconds, raw text | bytes) sent as-is at that time, for protocol
        tests; ``before_start``: raw messages sent between ``connected`` and ``start``;
        ``media_format``: overrides the ``start`` message's (Twilio's is μ-law 8 kHz mono).

        ``validate``: called with every message the bridge sends and the stream's sid; an error it
        raises ends the call and comes out of ``run()``.
        """
        self.url = url
        self.caller_audio = caller_audio
        self.call_sid = call_sid or self.new_call_id()
        self.stream_sid = self.new_stream_id()
        self.account_sid = "AC" + "0" * 32
        self.from_number, self.to_number = from_number, to_number  # for carriers whose start names them
        self.custom_parameters = custom_parameters or {}
        self.duration_s = duration_s if duration_s is not None else len(caller_audio) / 8000 + 1.0
        self.hang_up = hang_up
        self.extra = sorted(extra_messages or [], key=lambda m: m[0])
        self.outbound_audio = outbound_audio
        self.hang_up_when_quiet_s = hang_up_when_quiet_s
        self.before_start = list(before_start or [])
        self.media_format = media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        self.closed_by_bridge_at: float | None = None  # seconds since start, if the bridge closed
        self.validate = validate or type(self).default_validate
        self._seq = 0
        self._buffer = bytearray()  # agent audio queued for playback
        self._marks: deque[tuple[int, str]] = deque()  # (byte position in buffer stream, name)
        self._queued_total = 0  # bytes ever queued (positions are in this stream)
        self._played_total = 0
        self._caller = bytearray()
        self._agent = bytearray()
        self._played = bytearray()
        self._timeline: list[TimelineEntry] = []
        self._echoed: list[str] = []
        self._echoed_by_clear: list[str] = []
        self._clears: list[float] = []
        self._received: list[dict[str, Any]] = []
        self._t0 = 0.0
        self._agent_playing = False
        self._frame_started, self._frame_audio_ms = 0.0, 0.0  # the frame playing now
        self.events: asyncio.Queue[TimelineEntry] = asyncio.Queue()  # live feed for a UI
        self.started = asyncio.Event()  # set when the stream opens: ``elapsed`` counts from then
        self._redirected = False

    # --- The carrier's wire: subclasses ---

    @classmethod
    def new_call_id(cls) -> str:
        """The carrier's id for a new call (Twilio's CallSid shape by default)."""
        return "CA" + uuid.uuid4().hex

    @classmethod
    def new_stream_id(cls) -> str:
        return "MZ" + uuid.uuid4().hex

    def opening(self) -> list[Frame]:
        """What the carrier sends once the socket is open (``connected``, ``start``…)."""
        raise NotImplementedError

    def media(self, frame: bytes, k: int, track: str) -> Frame:
        """The ``k``-th 20 ms caller frame (μ-law) as the carrier sends it."""
        raise NotImplementedError

    def echo(self, name: str) -> Frame:
        """The carrier telling the app that playback reached mark ``name``."""
        raise NotImplementedError

    def cleared(self) -> list[Frame]:
        """What the carrier answers a clear with, beyond returning marks (Plivo: ``clearedAudio``)."""
        return []

    def hang_up_frames(self) -> list[Frame]:
        """Sent when the caller hangs up, before the socket closes (``stop``; nothing on Plivo)."""
        return []

    def interpret(self, raw: str | bytes) -> tuple[dict[str, Any], Action]:
        """One message from the app: (the message, payload elided, for ``received``; what it asks).
        Raises ``CarrierProtocolError`` for what the carrier would refuse."""
        raise NotImplementedError

    def check(self, msg: dict[str, Any]) -> None:
        if self.validate is not None:
            self.validate(msg, self.stream_sid)

    def redirect(self) -> None:
        """The call got new TwiML (a REST call update): as Twilio does, this stream stops; the new
        TwiML's stream is another simulator's to open."""
        self._redirected = True

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def elapsed(self) -> float:
        """Seconds since the stream started, on the clock of the timeline and the recordings."""
        return self._now()

    def _note(self, kind: str, **detail: Any) -> None:
        entry = TimelineEntry(round(self._now(), 4), kind, detail)
        self._timeline.append(entry)
        self.events.put_nowait(entry)

    async def run(self) -> CallResult:
        close_code = None
        async with websockets.connect(self.url, max_size=2**24, compression=None, max_queue=None) as ws:
            self._t0 = time.monotonic()
            self.started.set()
            for frame in self.opening():
                await ws.send(frame)
            receiver = asyncio.create_task(self._receive(ws))
            try:
                await self._pace(ws, receiver)
            except websockets.ConnectionClosed:  # the bridge closed the stream while we were talking
                await asyncio.wait([receiver], timeout=1.0)  # let the receiver note it
            finally:
                receiver.cancel()
                try:
                    await receiver
                except (asyncio.CancelledError, websockets.ConnectionClosed):
                    pass
            close_code = ws.close_code
        return CallResult(bytes(self._caller), bytes(self._agent), self._timeline, self._echoed,
                          self._echoed_by_clear, self._clears, self._received, close_code,
                          self.closed_by_bridge_at, bytes(self._played))

    async def _pace(self, ws, receiver: asyncio.Task) -> None:
        """Every 20 ms: send one caller frame, play one agent frame. Absolute schedule, no drift."""
        n_frames = int(self.duration_s * 1000 / FRAME_MS)
        extra = deque(self.extra)
        answered, quiet_frames = False, 0
        for k in range(n_frames):
            delay = self._t0 + k * FRAME_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if receiver.done():
                return  # the bridge closed the stream
            if self._redirected:
                self._note("redirected")
                break
            while extra and extra[0][0] <= k * FRAME_MS / 1000:
                await ws.send(extra.popleft()[1])
            frame = self._frame(self.caller_audio, k)
            self._caller += frame
            await ws.send(self.media(frame, k, "inbound"))
            if self.outbound_audio is not None:
                other = self._frame(self.outbound_audio, k)
                self._agent += other
                await ws.send(self.media(other, k, "outbound"))
            else:
                await self._play_frame(ws)
            if self.hang_up_when_quiet_s is not None and k * FRAME_BYTES >= len(self.caller_audio):
                if self._agent_playing:
                    answered, quiet_frames = True, 0
                else:
                    quiet_frames += 1
                if answered and quiet_frames * FRAME_MS >= self.hang_up_when_quiet_s * 1000:
                    break
        if self.hang_up or self._redirected:
            for frame in self.hang_up_frames():
                await ws.send(frame)

    def _frame(self, audio: bytes, k: int) -> bytes:
        frame = audio[k * FRAME_BYTES:(k + 1) * FRAME_BYTES]
        if len(frame) < FRAME_BYTES:
            if audio is self.caller_audio and k * FRAME_BYTES < len(audio) <= (k + 1) * FRAME_BYTES:
                self._note("caller_audio_end")
            frame = frame + ULAW_SILENCE * (FRAME_BYTES - len(frame))
        return frame

    async def _play_frame(self, ws) -> None:
        # Marks whose audio finished playing in the previous frame come back now, as Twilio
        # echoes a mark only once the audio before it has been played out.
        while self._marks and self._marks[0][0] <= self._played_total:
            name = self._marks.popleft()[1]
            self._echoed.append(name)
            await ws.send(self.echo(name))
        played = bytes(self._buffer[:FRAME_BYTES])
        del self._buffer[:FRAME_BYTES]
        self._played_total += len(played)
        self._played += played
        self._frame_started, self._frame_audio_ms = time.monotonic(), len(played) / 8
        if played and not self._agent_playing:
            self._agent_playing = True
            self._note("agent_audio_start")
        elif not played and self._agent_playing:
            self._agent_playing = False
            self._note("agent_audio_stop")
        self._agent += played + ULAW_SILENCE * (FRAME_BYTES - len(played))

    def _heard_ms(self) -> float:
        """Agent audio heard so far, to the millisecond: the frame playing now only counts as far
        as it has played."""
        elapsed = (time.monotonic() - self._frame_started) * 1000
        return self._played_total / 8 - max(0.0, self._frame_audio_ms - elapsed)

    async def _receive(self, ws) -> None:
        try:
            await self._receive_messages(ws)
        except websockets.ConnectionClosedError:
            pass  # closed with an error code (e.g. 1009): still the bridge hanging up
        self.closed_by_bridge_at = self._now()  # the bridge ended the stream: Twilio runs the fallback
        self._note("closed_by_bridge")

    async def _receive_messages(self, ws) -> None:
        async for raw in ws:
            msg, action = self.interpret(raw)
            self._received.append(msg)
            if type(action) is Audio:
                self._buffer += action.ulaw
                self._queued_total += len(action.ulaw)
            elif type(action) is Mark:
                self._marks.append((self._queued_total, action.name))
            elif type(action) is Clear:
                self._clears.append(self._now())
                dropped = len(self._buffer)
                self._buffer.clear()
                self._queued_total = self._played_total
                self._note("clear", dropped_ms=dropped / 8, played_ms=self._heard_ms())
                while self._marks:  # returned at once (Twilio's rule), or dropped (Plivo's)
                    name = self._marks.popleft()[1]
                    if self.clear_echoes_marks:
                        self._echoed_by_clear.append(name)
                        await ws.send(self.echo(name))
                for frame in self.cleared():
                    await ws.send(frame)


class TwilioCallSimulator(CallSimulator):
    """Twilio's Media Streams, exactly (``before_start``, ``media_format`` and ``validate`` let
    protocol tests bend or check it)."""

    carrier, label = "twilio", "Twilio"

    def _message(self, event: str, **body: Any) -> str:
        self._seq += 1
        return json.dumps({"event": event, "sequenceNumber": str(self._seq),
                           "streamSid": self.stream_sid, **body})

    def opening(self) -> list[Frame]:
        self._seq = 1
        return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}), *self.before_start,
                self._message("start", start={
                    "accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
                    "tracks": ["inbound", "outbound"] if self.outbound_audio is not None else ["inbound"],
                    "customParameters": self.custom_parameters, "mediaFormat": self.media_format})]

    def media(self, frame: bytes, k: int, track: str) -> Frame:
        return self._message("media", media={"track": track, "chunk": str(k + 1), "timestamp": str(k * FRAME_MS),
                                             "payload": base64.b64encode(frame).decode("ascii")})

    def echo(self, name: str) -> Frame:
        return self._message("mark", mark={"name": name})

    def hang_up_frames(self) -> list[Frame]:
        return [self._message("stop", stop={"accountSid": self.account_sid, "callSid": self.call_sid})]

    def interpret(self, raw: str | bytes) -> tuple[dict[str, Any], Action]:
        msg = json.loads(raw)
        self.check(msg)
        return media_stream_action(msg)


def media_stream_action(msg: dict[str, Any]) -> tuple[dict[str, Any], Action]:
    """What a message in Media Streams' vocabulary asks (Twilio's; Telnyx and SignalWire speak it
    too): ``media`` to play (its payload elided in what is kept), a ``mark``, a ``clear``."""
    event = msg.get("event")
    if event == "media":
        audio = base64.b64decode(msg["media"]["payload"])
        return {"event": "media", "bytes": len(audio)}, Audio(audio)
    if event == "mark":
        return msg, Mark(msg["mark"]["name"])
    if event == "clear":
        return msg, Clear()
    return msg, None
