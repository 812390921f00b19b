"""Vonage Voice API websockets onto the core's neutral events, and back; its NCCO answers.

Facts from ../shared/PROTOCOLS-carriers.md (Vonage §1, §3), after Vonage's websockets guide:
the NCCO ``connect``s the call to a ``websocket`` endpoint with a ``content-type`` (``audio/l16;
rate=16000`` here) and custom ``headers`` (at most 512 bytes). The first message is text JSON,
``{"event":"websocket:connected","content-type":…, …headers}``: the headers at the top level.
Then **binary** frames, 16-bit little-endian PCM, 20 ms each (640 bytes at 16 kHz), both ways,
with text JSON events between them: ``websocket:dtmf`` (``digit``), ``websocket:cleared``,
``websocket:notify``. Out: binary frames of exactly 640 bytes, and ``{"action":"clear"}``.

Audio: the core speaks μ-law 8 kHz (its neutral vocabulary, wire/media.py), so this wire
converts, with the core's own streaming polyphase filters (core/audio.py) at a ratio of 2:
16 kHz in is low-passed and decimated to 8 kHz, then μ-law; μ-law out is expanded and
interpolated to 16 kHz. (The line's band above 4 kHz is lost on the way in: the core's format.)
Audio out is cut into 640-byte frames; what is left under a frame waits for more.

No marks: Vonage's ``notify`` (echoed once the audio before it has played) is reported only by
third parties (unverified), so "what was heard" comes from a playout clock kept here. Vonage
plays what it is sent at real time, after what it holds; the caller's frames come at real time
too (one per 20 ms, silence included), so each one advances the clock by its length. A mark
is placed at the end of the audio sent before it (held audio included) and echoed, as
Twilio's are, once the clock has played that far. When the clock reaches the end of the whole
frames sent and audio is still held back, Vonage's buffer is running dry: the held audio goes
out padded with silence (``released``), so the end of every answer is heard and its last mark
echoed. A clear empties Vonage's buffer: the pending marks are echoed at once (Twilio's rule,
which the core expects), the held audio is dropped, and the clock starts again from now.

Our call sid: a Vonage uuid is not the ``CA`` + 32 hex our files, claims and signed paths take,
so the call is known to us by ``call_sid_for(uuid)``; the uuid rides in our signed parameters
and comes back as ``Start.carrier_call_id`` for REST requests.
"""

from __future__ import annotations

import audioop  # the stdlib's, or audioop-lts on Python 3.13+ (a dependency)
import base64
import hashlib
import json
import re
from collections import deque
from collections.abc import Sequence

from telephony.wire import twilio as tw
from telephony.wire.media import UnusedEvent, json_message
from telephony.wire.resample import Downsampler, Upsampler

VOICE_PATH = "/vonage/voice"  # the answer URL (GET, Vonage's default, or POST with a JSON body)
EVENT_PATH = "/vonage/event"  # call progress, machine detection and the websocket's own events
MEDIA_STREAM_PATH = "/vonage/media-stream"
CONTENT_TYPE = "audio/l16;rate=16000"
LINE_RATE = 16000
FRAME_BYTES = 640  # 20 ms of 16-bit PCM at 16 kHz: Vonage's one frame size, both ways
FRAME_SAMPLES = FRAME_BYTES // 2
HEADERS_LIMIT = 512  # bytes of the NCCO's websocket headers (the JSON object): more go in the URL
# The keys of the first message that are Vonage's, not our headers.
_OWN_KEYS = frozenset({"event", "content-type"})
_UUID = re.compile(r"[A-Za-z0-9-]{1,64}")


def call_sid_for(call_uuid: str) -> str:
    """Our sid for a Vonage call: stable (answer webhook and stream agree) and in the shape we accept."""
    return "CA" + hashlib.sha256(b"vonage:" + call_uuid.encode()).hexdigest()[:32]


def valid_uuid(value: str) -> bool:
    return bool(_UUID.fullmatch(value))


def headers_fit(parameters: dict[str, str]) -> bool:
    """Whether our signed parameters fit the websocket endpoint's ``headers`` (512 bytes)."""
    return len(json.dumps(parameters, separators=(",", ":"), ensure_ascii=False).encode()) <= HEADERS_LIMIT


def connect_ncco(uri: str, headers: dict[str, str], event_url: str, fallback: str) -> list[dict]:
    """``connect`` to our websocket. When the socket closes without a hang-up (we gave up on the
    call), the NCCO goes on: the fallback is spoken then, as after Twilio's ``<Connect>``."""
    ncco: list[dict] = [{"action": "connect", "eventUrl": [event_url], "eventMethod": "POST",
                         "endpoint": [{"type": "websocket", "uri": uri, "content-type": CONTENT_TYPE,
                                       "headers": headers}]}]
    if fallback:
        ncco.append({"action": "talk", "text": fallback})
    return ncco


BUSY_TEXT = "Sorry, all our lines are busy. Please call again later."


def busy_ncco() -> list[dict]:
    """No NCCO action rejects a call: a short apology, then the NCCO ends and so does the call."""
    return [{"action": "talk", "text": BUSY_TEXT}]


def connect_target_ncco(target: str, caller_id: str | None) -> list[dict]:
    """A transfer's NCCO: the caller is connected to ``target`` (E.164, or a sip: URI). Vonage's
    ``connect`` needs a ``from`` (our number, digits only) or ``randomFromNumber``."""
    endpoint = ({"type": "sip", "uri": target} if target.startswith("sip:")
                else {"type": "phone", "number": target.lstrip("+")})
    action: dict = {"action": "connect", "endpoint": [endpoint]}
    if caller_id and caller_id.lstrip("+").isdigit():
        action["from"] = caller_id.lstrip("+")
    else:
        action["randomFromNumber"] = True
    return [action]


class PlayoutClock:
    """Where Vonage's playout is, in 16 kHz samples of the audio sent to it: sans-I/O, advanced
    by the caller's frames (the line's own clock). Marks wait here until it passes them."""

    def __init__(self) -> None:
        self.sent = 0  # samples sent in whole frames
        self.played = 0  # samples of them played (never more than sent)
        self._marks: deque[tuple[int, str]] = deque()  # (position, name), in order

    def mark(self, name: str, position: int) -> None:
        self._marks.append((position, name))

    def advance(self, samples: int) -> list[str]:
        """The line moved on by ``samples``: the marks now played."""
        self.played = min(self.sent, self.played + samples)
        reached = []
        while self._marks and self._marks[0][0] <= self.played:
            reached.append(self._marks.popleft()[1])
        return reached

    @property
    def drained(self) -> bool:
        """Vonage has played everything it was sent."""
        return self.played >= self.sent

    def clear(self) -> list[str]:
        """Vonage's buffer was emptied: nothing sent is still to play; the pending marks, in order."""
        self.played = self.sent
        released = [name for _, name in self._marks]
        self._marks.clear()
        return released


class VonageMedia:
    """One Vonage websocket's wire: the converters, the audio held under a frame, the playout clock.
    ``parameters``: our signed parameters when they came in the URL (too big for the headers)."""

    carrier, label = "vonage", "Vonage"

    def __init__(self, parameters: dict[str, str] | None = None) -> None:
        self.parameters = parameters or {}
        self._down = Downsampler(2)  # 16 kHz → 8 kHz, caller to core
        self._up = Upsampler(2)  # 8 kHz → 16 kHz, core to caller
        self._held = b""  # agent audio under one frame, waiting for more (or for the line to drain)
        self._clock = PlayoutClock()
        self._released: list[str] = []  # marks echoed by a clear, given with the next parse
        self._line_ms = 0.0  # the caller's audio so far: the media timestamps
        self._started = False

    # --- In ---

    def parse(self, raw: str | bytes) -> Sequence[tw.TwilioEvent]:
        events: list[tw.TwilioEvent] = [tw.Mark(name) for name in self._released]
        self._released = []
        if isinstance(raw, (bytes, bytearray)):
            return events + self._audio(bytes(raw))
        msg = json_message(raw, self.label)
        event = msg.get("event")
        if event == "websocket:connected":
            return events + [self._start(msg)]
        if event == "websocket:dtmf":
            digit = msg.get("digit")
            if not isinstance(digit, str) or len(digit) != 1 or digit not in tw.KEYPAD:
                raise tw.TwilioProtocolError("websocket:dtmf whose digit is not one keypad key")
            return events + [tw.Dtmf(digit)]
        if event in ("websocket:cleared", "websocket:notify"):
            return events  # our clear's answer (its marks went with it); notify: we send none
        if isinstance(event, str):
            if events:
                return events
            raise UnusedEvent(raw)
        raise tw.TwilioProtocolError("message without an 'event' name")

    def _start(self, msg: dict) -> tw.Start:
        kind = str(msg.get("content-type") or "").replace(" ", "").lower()
        if kind != CONTENT_TYPE:
            raise tw.BadStart("websocket:connected with a content-type we did not ask for")
        parameters = self.parameters or {str(k): str(v) for k, v in msg.items() if k not in _OWN_KEYS}
        call_uuid = parameters.get("uuid", "")
        if not valid_uuid(call_uuid):
            raise tw.BadStart("websocket:connected without the call's uuid in its headers")
        self._started = True
        return tw.Start(stream_sid=call_uuid, call_sid=parameters.get("call_sid") or call_sid_for(call_uuid),
                        custom_parameters=parameters, carrier_call_id=call_uuid)

    def _audio(self, pcm: bytes) -> list[tw.TwilioEvent]:
        if not self._started:
            raise tw.TwilioProtocolError("audio before websocket:connected")
        if len(pcm) % 2:
            pcm = pcm[:-1]  # a torn sample is noise; keep the stream aligned
        samples = len(pcm) // 2
        events: list[tw.TwilioEvent] = [tw.Mark(name) for name in self._clock.advance(samples)]
        ulaw = audioop.lin2ulaw(self._down.process(pcm), 2)
        timestamp = int(self._line_ms)
        self._line_ms += samples * 1000 / LINE_RATE
        if ulaw:
            events.insert(0, tw.Media(base64.b64encode(ulaw).decode("ascii"), timestamp))
        return events

    def released(self) -> Sequence[bytes]:
        """After a parse: the held audio, padded to a frame, once Vonage has played all else."""
        if not self._held or not self._clock.drained:
            return ()
        frame = self._held + bytes(FRAME_BYTES - len(self._held))
        self._held = b""
        self._clock.sent += FRAME_SAMPLES
        return (frame,)

    # --- Out ---

    def encode(self, message: tw.TwilioMessage, stream_id: str) -> Sequence[str | bytes]:
        if type(message) is tw.SendMedia:
            pcm = self._held + self._up.process(audioop.ulaw2lin(base64.b64decode(message.payload), 2))
            whole = len(pcm) - len(pcm) % FRAME_BYTES
            self._held = pcm[whole:]
            self._clock.sent += whole // 2
            return tuple(pcm[k:k + FRAME_BYTES] for k in range(0, whole, FRAME_BYTES))
        if type(message) is tw.SendMark:
            self._clock.mark(message.name, self._clock.sent + len(self._held) // 2)
            return ()
        self._held = b""  # a clear drops what was held back too
        self._up.reset()
        self._released.extend(self._clock.clear())
        return ('{"action":"clear"}',)
