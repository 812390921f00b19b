"""Plivo audio streaming (bidirectional) onto the core's neutral events, and back; its XML answer.

Facts from ../shared/PROTOCOLS-carriers.md (Plivo §1, §3), after Plivo's streaming reference:
JSON text frames. In: ``start`` (``start.callId``, ``start.streamId``, ``start.mediaFormat``
``{encoding, sampleRate}``, ``extra_headers``); ``media`` (``media.payload`` base64); ``dtmf``
(``dtmf.digit``); ``playedStream`` (a checkpoint of ours reached; ``name``); ``clearedAudio``.
No ``stop`` frame: the socket just closes. Out: ``playAudio`` ``{media: {contentType, sampleRate,
payload}}`` (matching the stream's ``contentType``: μ-law 8 kHz here, the core's own format, so
nothing is transcoded), ``checkpoint`` ``{streamId, name}`` and ``clearAudio`` ``{streamId}``.

Our stream parameters: Plivo's ``extraHeaders`` allow only [A-Za-z0-9] and 512 bytes, too little
for a signed token, numbers and an outbound call's instructions. So they travel in the stream
URL, as one more path segment after the signed one (``/p.<base64url JSON>``): Plivo hands the
URL back verbatim, the token inside still binds them to the call, and the log filter masks the
segment (``stream_paths.redact_segments``). The route decodes it and gives it to this wire,
whose ``start`` carries it as the custom parameters, so the gate checks it as for any carrier.

Checkpoints and a clear: Plivo reports a checkpoint "only if the preceding events were played
successfully", so the ones pending at a clear may never be echoed. The core (Twilio's rules)
expects a clear to return them: on ``clearedAudio`` this wire releases the checkpoints still
pending, in order, and drops a late ``playedStream`` for one already released.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from telephony.wire import twilio as tw
from telephony.wire.media import UnusedEvent, json_message
from telephony.wire.path_parameters import (  # noqa: F401 (the names Plivo's routes and tests use)
    MAX_PARAMS_SEGMENT,
    PARAMS_PREFIX,
    parameters_from_segment,
    parameters_segment,
)

VOICE_PATH = "/plivo/voice"  # the Answer URL (POST, Plivo's default; GET too)
STATUS_PATH = "/plivo/status"  # hang-up, machine detection and stream status callbacks
TRANSFER_PATH = "/plivo/transfer"  # the XML a transferred call fetches: <Dial> to the target
MEDIA_STREAM_PATH = "/plivo/media-stream"
CONTENT_TYPE = "audio/x-mulaw;rate=8000"


def call_sid_for(call_uuid: str) -> str:
    """Our sid for a Plivo call (its CallUUID is not the ``CA`` + 32 hex our files and claims take)."""
    return "CA" + hashlib.sha256(b"plivo:" + call_uuid.encode()).hexdigest()[:32]


def stream_xml(stream_url: str, fallback: str) -> str:
    """``<Stream bidirectional keepCallAlive>``: without keepCallAlive Plivo goes on to the next
    element at once (and hangs up); with it, what follows runs once the stream disconnects, so
    the fallback is heard exactly when we give up on a call, as on Twilio."""
    response = ET.Element("Response")
    ET.SubElement(response, "Stream", bidirectional="true", keepCallAlive="true",
                  contentType=CONTENT_TYPE).text = stream_url
    if fallback:
        ET.SubElement(response, "Speak").text = fallback
    ET.SubElement(response, "Hangup")
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")


def dial_xml(target: str) -> str:
    """A transfer: the caller is dialled through to ``target`` (an E.164 number or a sip: URI)."""
    response = ET.Element("Response")
    dial = ET.SubElement(response, "Dial")
    ET.SubElement(dial, "User" if target.startswith("sip:") else "Number").text = target
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")


def busy_xml() -> str:
    return '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup reason="busy"/></Response>'


class PlivoMedia:
    """One Plivo stream's wire: its parameters (from the URL) and the checkpoints not yet echoed."""

    carrier, label = "plivo", "Plivo"

    def __init__(self, parameters: dict[str, str]) -> None:
        self.parameters = parameters
        self._pending: list[str] = []  # checkpoint names sent, not yet echoed (in order)

    # --- In ---

    def parse(self, raw: str | bytes) -> Sequence[tw.TwilioEvent]:
        msg = json_message(raw, self.label)
        event = msg.get("event")
        if event == "media":
            media = msg.get("media")
            if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
                raise tw.TwilioProtocolError("media without a 'payload' string")
            try:
                timestamp = int(media.get("timestamp") or 0)
            except (TypeError, ValueError, OverflowError):
                timestamp = 0
            return (tw.Media(media["payload"], timestamp, str(media.get("track") or "inbound"),
                             str(msg.get("streamId") or "")),)
        if event == "start":
            return (self._start(msg),)
        if event == "playedStream":
            name = msg.get("name")
            if not isinstance(name, str) or not name:
                raise tw.TwilioProtocolError("playedStream without a 'name'")
            if name not in self._pending:
                return ()  # released already by a clear
            # Played in order: any checkpoint before it was reached too.
            reached = self._pending[:self._pending.index(name) + 1]
            del self._pending[:len(reached)]
            return tuple(tw.Mark(n) for n in reached)
        if event == "clearedAudio":
            released, self._pending = self._pending, []
            return tuple(tw.Mark(n) for n in released)
        if event == "dtmf":
            dtmf = msg.get("dtmf")
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
            if not isinstance(digit, str) or len(digit) != 1 or digit not in tw.KEYPAD:
                raise tw.TwilioProtocolError("dtmf whose digit is not one keypad key")
            return (tw.Dtmf(digit),)
        if event == "stop":  # not documented (the socket closes), but harmless if it comes
            return (tw.Stop(),)
        if isinstance(event, str):
            raise UnusedEvent(raw)
        raise tw.TwilioProtocolError("message without an 'event' name")

    def _start(self, msg: dict) -> tw.Start:
        start = msg.get("start")
        if not isinstance(start, dict):
            raise tw.BadStart("'start' message without a 'start' object")
        call_id, stream_id = start.get("callId"), start.get("streamId") or msg.get("streamId")
        if not isinstance(call_id, str) or not call_id or not isinstance(stream_id, str) or not stream_id:
            raise tw.BadStart("start without callId or streamId")
        fmt = start.get("mediaFormat") or {}
        if not isinstance(fmt, dict):
            raise tw.BadStart("start whose mediaFormat is not an object")
        try:
            rate = int(fmt.get("sampleRate") or 8000)
        except (TypeError, ValueError, OverflowError):
            raise tw.BadStart("start with a non-numeric sampleRate") from None
        return tw.Start(stream_sid=stream_id, call_sid=self.parameters.get("call_sid") or call_sid_for(call_id),
                        account_sid=str(start.get("accountId") or ""), custom_parameters=dict(self.parameters),
                        encoding=str(fmt.get("encoding") or "audio/x-mulaw"), sample_rate=rate,
                        carrier_call_id=call_id)

    # --- Out ---

    def encode(self, message: tw.TwilioMessage, stream_id: str) -> Sequence[str]:
        if type(message) is tw.SendMedia:
            return ('{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,'
                    '"payload":"%s"}}' % message.payload,)
        if type(message) is tw.SendMark:
            self._pending.append(message.name)
            return (json.dumps({"event": "checkpoint", "streamId": stream_id, "name": message.name}),)
        return (json.dumps({"event": "clearAudio", "streamId": stream_id}),)
