"""SignalWire's Compatibility API (cXML) media streams onto the core's neutral events, and back.

Facts from ../shared/PROTOCOLS-carriers.md (SignalWire): cXML is Twilio's markup, so the answer
is ``wire/twiml.connect_stream`` unchanged (``<Connect><Stream>``, our signed ``<Parameter>``s;
the stream URL carries no query, which SignalWire refuses: our signed segment is in its path).
The media websocket speaks Twilio's messages (``start``/``media``/``mark``/``dtmf``/``clear``/
``stop``) with two differences handled here: frames may come without the top-level
``streamSid`` (SignalWire's ``start`` has it inside ``start`` only), and every frame we send must
carry it (``serialize`` always writes it).

Our call sid: SignalWire's call ids are UUIDs, not the ``CA`` + 32 hex our files, claims, feeds
and signed stream paths accept, so a SignalWire call is known to us by ``call_sid_for(its id)``;
the real id rides in ``Start.carrier_call_id`` for REST requests (as for Telnyx).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from telephony.wire import twilio as tw
from telephony.wire.media import UnusedEvent, json_message

VOICE_PATH = "/signalwire/voice"
OUTBOUND_ANSWER_PATH = "/signalwire/outbound"
AMD_CALLBACK_PATH = "/signalwire/amd"
STATUS_CALLBACK_PATH = "/signalwire/status"
MEDIA_STREAM_PATH = "/signalwire/media-stream"
_OURS = re.compile(r"CA[0-9a-f]{32}")
_CARRIER_ID = re.compile(r"[A-Za-z0-9-]{1,64}")  # a UUID (or a Twilio-shaped sid)


def call_sid_for(call_id: str) -> str:
    """Our sid for a SignalWire call: stable (webhook and stream agree) and in the shape we accept."""
    return "CA" + hashlib.sha256(b"signalwire:" + call_id.encode()).hexdigest()[:32]


def valid_call_id(call_id: str) -> bool:
    return bool(_CARRIER_ID.fullmatch(call_id))


class SignalWireMedia:
    """One stream's frames; remembers its stream sid for the frames that leave it out."""

    carrier, label = "signalwire", "SignalWire"

    def __init__(self) -> None:
        self._stream_sid = ""

    def parse(self, raw: str | bytes) -> Sequence[tw.TwilioEvent]:
        msg = json_message(raw, self.label)
        if msg.get("event") == "start":
            return (self._start(msg),)
        if "streamSid" not in msg and self._stream_sid:
            msg["streamSid"] = self._stream_sid
        event = tw.parse_message(msg)
        if event is None:
            raise UnusedEvent(raw)
        return (event,)

    def _start(self, msg: dict) -> tw.Start:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise tw.BadStart("'start' message without a 'start' object")
        if "streamSid" not in msg and "streamSid" not in start:
            raise tw.BadStart("start without a streamSid")
        call_id = start.get("callSid")
        if not isinstance(call_id, str) or not valid_call_id(call_id):
            raise tw.BadStart("start without a SignalWire callSid")
        parsed = tw.parse_message({**msg, "start": {**start, "callSid": "CA" + "0" * 32}})
        assert isinstance(parsed, tw.Start)
        params = parsed.custom_parameters
        # An outbound call's sid was chosen (and signed) before SignalWire named the call.
        sid = params.get("call_sid") if _OURS.fullmatch(params.get("call_sid", "")) and \
            params.get("direction", "").startswith("outbound") else call_sid_for(call_id)
        self._stream_sid = parsed.stream_sid
        return tw.Start(stream_sid=parsed.stream_sid, call_sid=sid, account_sid=parsed.account_sid,
                        tracks=parsed.tracks, custom_parameters=params, encoding=parsed.encoding,
                        sample_rate=parsed.sample_rate, channels=parsed.channels, carrier_call_id=call_id)

    def encode(self, message: tw.TwilioMessage, stream_id: str) -> Sequence[str]:
        return (tw.serialize(message, stream_id or self._stream_sid),)
