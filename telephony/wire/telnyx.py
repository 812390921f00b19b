"""Telnyx media streaming (bidirectional, rtp mode) onto the core's neutral events, and back.

Facts from ../shared/PROTOCOLS-carriers.md (Telnyx §3), after Telnyx's AsyncAPI page:
JSON text frames. In: ``connected``; ``start`` (top-level ``stream_id`` and ``sequence_number``,
``start.call_control_id``, ``start.custom_parameters`` from our TeXML ``<Parameter>``s, or
``start.client_state`` (base64) on a Call Control stream, ``start.media_format``); ``media``
(``media.payload`` base64 RTP payload, ``media.track``, ``media.timestamp``; "frame order is not
guaranteed": ordered here by ``sequence_number``); ``dtmf`` (``dtmf.digit``); ``mark`` (echo);
``error``; ``stop``. Out: ``{"event":"media","media":{"payload"}}`` (rtp mode: raw PCMU, each
chunk 20 ms to 30 s), ``{"event":"mark","mark":{"name"}}``, ``{"event":"clear"}``.

Our call sid: Telnyx's call id (``v3:…``) is not the ``CA`` + 32 hex our files, claims, feeds and
signed stream paths accept, so a Telnyx call is known to us by ``call_sid_for(call_control_id)``,
a digest of it in that shape; the real id rides in ``Start.carrier_call_id`` for REST requests.
An outbound call's sid is chosen before Telnyx names the call: it is in the signed parameters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
from collections.abc import Sequence

from telephony.wire import twilio as tw
from telephony.wire.media import UnusedEvent, json_message

ULAW_SILENCE = 0xFF
MIN_CHUNK_BYTES = 160  # 20 ms of PCMU at 8 kHz: Telnyx's smallest chunk sent back
REORDER_DEPTH = 5  # media frames held for a missing one (100 ms) before it is given up
_ENCODINGS = {"PCMU": "audio/x-mulaw", "audio/x-mulaw": "audio/x-mulaw"}


def call_sid_for(call_control_id: str) -> str:
    """Our sid for a Telnyx call: stable (webhook and stream agree) and in the shape we accept."""
    return "CA" + hashlib.sha256(b"telnyx:" + call_control_id.encode()).hexdigest()[:32]


def client_state(parameters: dict[str, str]) -> str:
    """Signed stream parameters as a Call Control ``client_state`` (base64 JSON), for outbound
    calls, whose stream Telnyx opens with no TeXML (so no ``<Parameter>``)."""
    return base64.b64encode(json.dumps(parameters, separators=(",", ":")).encode()).decode()


def _parameters_from_state(state: object) -> dict[str, str]:
    if not isinstance(state, str) or not state:
        return {}
    try:
        decoded = json.loads(base64.b64decode(state, validate=True))
    except (binascii.Error, ValueError):
        raise tw.BadStart("start whose client_state is not our base64 JSON") from None
    if not isinstance(decoded, dict):
        raise tw.BadStart("start whose client_state is not an object")
    return {str(k): str(v) for k, v in decoded.items()}


def _sequence(msg: dict) -> int | None:
    try:
        return int(msg["sequence_number"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


class TelnyxMedia:
    """One Telnyx stream's wire: holds the reorder buffer and the sub-20-ms remainder of audio."""

    carrier, label = "telnyx", "Telnyx"

    def __init__(self) -> None:
        self._held: list[tuple[int, int, tw.Media]] = []  # (sequence, arrival, media), a heap
        self._arrivals = 0
        self._next: int | None = None  # the sequence number released next
        self._passed: set[int] = set()  # numbers of non-media frames ahead of _next (no media to wait for)
        self._pending = b""  # agent audio not sent yet: under 20 ms, waiting for more or a mark

    # --- In ---

    def parse(self, raw: str | bytes) -> Sequence[tw.TwilioEvent]:
        msg = json_message(raw, self.label)
        event = msg.get("event")
        if event == "media":
            return self._ordered(msg)
        if event == "start":
            start = self._start(msg)
            self._next = None if (seq := _sequence(msg)) is None else seq + 1
            return (start,)
        self._seen(msg)
        if event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str) or not name:
                raise tw.TwilioProtocolError("mark without a 'name'")
            return (tw.Mark(name),)
        if event == "dtmf":
            dtmf = msg.get("dtmf")
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
            if not isinstance(digit, str) or len(digit) != 1 or digit not in tw.KEYPAD:
                raise tw.TwilioProtocolError("dtmf whose digit is not one keypad key")
            return (tw.Dtmf(digit),)
        if event == "stop":
            held = self._release(everything=True)  # what was held is older than the end
            return (*held, tw.Stop())
        if event == "connected":
            return (tw.Connected("telnyx"),)
        if isinstance(event, str):
            raise UnusedEvent(raw)  # error, and anything newer: logged by the shell
        raise tw.TwilioProtocolError("message without an 'event' name")

    def _start(self, msg: dict) -> tw.Start:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise tw.BadStart("'start' message without a 'start' object")
        stream_id, call_id = msg.get("stream_id"), start.get("call_control_id")
        if not isinstance(stream_id, str) or not stream_id or not isinstance(call_id, str) or not call_id:
            raise tw.BadStart("start without stream_id or call_control_id")
        params = start.get("custom_parameters") or _parameters_from_state(start.get("client_state"))
        fmt = start.get("media_format") or {}
        if not isinstance(params, dict) or not isinstance(fmt, dict):
            raise tw.BadStart("start whose custom_parameters or media_format is not an object")
        params = {str(k): str(v) for k, v in params.items()}
        encoding = str(fmt.get("encoding") or "PCMU")
        try:
            rate, channels = int(fmt.get("sample_rate") or 8000), int(fmt.get("channels") or 1)
        except (TypeError, ValueError, OverflowError):
            raise tw.BadStart("start with a non-numeric media_format") from None
        # An outbound call's sid was chosen (and signed) before Telnyx named the call.
        sid = params.get("call_sid") if params.get("direction", "").startswith("outbound") else None
        return tw.Start(stream_sid=stream_id, call_sid=sid or call_sid_for(call_id),
                        account_sid=str(start.get("user_id") or ""), custom_parameters=params,
                        encoding=_ENCODINGS.get(encoding, encoding), sample_rate=rate, channels=channels,
                        carrier_call_id=call_id)

    def _ordered(self, msg: dict) -> Sequence[tw.TwilioEvent]:
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise tw.TwilioProtocolError("media without a 'payload' string")
        try:
            timestamp = int(media.get("timestamp") or 0)
        except (TypeError, ValueError, OverflowError):
            timestamp = 0
        track = str(media.get("track") or "inbound")
        event = tw.Media(media["payload"], timestamp, "inbound" if track == "inbound_track" else track,
                         str(msg.get("stream_id") or ""))
        seq = _sequence(msg)
        if seq is None or self._next is None:
            return (event,)  # nothing to order by: as it came
        if seq < self._next:
            return ()  # later than a frame already played past it (or a duplicate): dropped
        self._arrivals += 1
        heapq.heappush(self._held, (seq, self._arrivals, event))
        return tuple(self._release())

    def _seen(self, msg: dict) -> None:
        """A non-media frame takes a sequence number too: it closes that gap in the media."""
        seq = _sequence(msg)
        if seq is not None and self._next is not None and seq >= self._next and len(self._passed) < 64:
            self._passed.add(seq)
            self._skip_passed()

    def _skip_passed(self) -> None:
        while self._next in self._passed:
            self._passed.discard(self._next)
            self._next += 1

    def _release(self, everything: bool = False) -> list[tw.Media]:
        out: list[tw.Media] = []
        while self._held:
            self._skip_passed()
            seq = self._held[0][0]
            if seq == self._next or everything or len(self._held) > REORDER_DEPTH:
                out.append(heapq.heappop(self._held)[2])  # past the depth, the missing frame is given up
                self._next = seq + 1
                self._passed = {n for n in self._passed if n > seq}
            else:
                break
        return out

    # --- Out ---

    def encode(self, message: tw.TwilioMessage, stream_id: str) -> Sequence[str]:
        if type(message) is tw.SendMedia:
            self._pending += base64.b64decode(message.payload)
            if len(self._pending) < MIN_CHUNK_BYTES:
                return ()  # under 20 ms: Telnyx would refuse it; sent with what follows
            chunk, self._pending = self._pending, b""
            return (_media(chunk),)
        if type(message) is tw.SendMark:
            frames = [self._flush()] if self._pending else []
            frames.append('{"event":"mark","mark":{"name":%s}}' % json.dumps(message.name))
            return frames
        self._pending = b""  # a clear drops what was held back too
        return ('{"event":"clear"}',)

    def _flush(self) -> str:
        """The held remainder before a mark, padded with silence to 20 ms: the mark then echoes
        when the audio before it has played, at most 20 ms late."""
        chunk = self._pending + bytes([ULAW_SILENCE]) * (MIN_CHUNK_BYTES - len(self._pending))
        self._pending = b""
        return _media(chunk)


def _media(chunk: bytes) -> str:
    return '{"event":"media","media":{"payload":"%s"}}' % base64.b64encode(chunk).decode()
