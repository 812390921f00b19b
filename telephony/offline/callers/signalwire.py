"""SignalWire's side of a Compatibility API (cXML) call, after ../shared/PROTOCOLS-carriers.md.

- Webhook: the voice URL, POSTed form-encoded with Twilio's fields (``CallSid`` a UUID,
  ``AccountSid`` the project id); signed as Twilio does, keyed with the project's Signing Key
  (``SIGNALWIRE_SIGNING_KEY``), in ``X-SignalWire-Signature``.
- Answer: cXML ``<Connect><Stream url>`` (no query string: SignalWire refuses one) with
  ``<Parameter>``s; a ``codec`` other than the default PCMU 8 kHz is refused here.
- Media: Twilio's messages, except that ``start`` has its ``streamSid`` inside ``start`` only and
  ``media`` frames come without one, while every frame the app sends must name the stream.
  Marks are echoed when played; a clear returns the pending ones; ``stop`` at the end.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Mapping

from telephony.offline.callers.base import Carrier, DialError, Signer, StreamInstructions
from telephony.offline.simulator import (
    FRAME_MS,
    Action,
    CallSimulator,
    CarrierProtocolError,
    Frame,
    media_stream_action,
)
from telephony.wire.signalwire import MEDIA_STREAM_PATH, VOICE_PATH

PROJECT_ID = "b5e2a3c4-0000-4000-8000-0123456789ab"


def parse_cxml(xml: str) -> StreamInstructions:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DialError(f"the webhook's answer is not XML: {exc}") from None
    stream = root.find("./Connect/Stream")
    url = stream.get("url", "") if stream is not None else ""
    if not url:
        raise DialError("the cXML has no <Connect><Stream url=…>")
    if "?" in url:
        raise DialError("the cXML's stream URL has a query string, which SignalWire does not support")
    if stream.get("codec", "PCMU") not in ("PCMU", "PCMU@8000h"):
        raise DialError(f"the cXML asks for codec {stream.get('codec')!r}: this caller plays PCMU 8 kHz only")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return StreamInstructions(url, parameters)


def webhook_fields(call_id: str, caller: str, callee: str) -> dict[str, str]:
    return {"AccountSid": PROJECT_ID, "CallSid": call_id, "From": caller, "To": callee, "CallStatus": "ringing",
            "Direction": "inbound", "ApiVersion": "2010-04-01"}


def signer(signing_key: str) -> Signer:
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(signing_key)
    return lambda method, url, fields, body: {
        "X-SignalWire-Signature": validator.compute_signature(url, dict(fields))}


def signer_from_env(env: Mapping[str, str], options: Mapping[str, Any]) -> Signer | None:
    key = env.get("SIGNALWIRE_SIGNING_KEY", "").strip()
    return signer(key) if key else None


def generated() -> tuple[dict[str, Any], dict[str, str]]:
    key = "PSK_" + secrets.token_hex(16)
    return {"signalwire_signing_key": key, "signalwire_validate_signatures": True}, {"SIGNALWIRE_SIGNING_KEY": key}


class SignalWireCallSimulator(CallSimulator):
    """SignalWire's media websocket for a cXML ``<Connect><Stream>`` (PCMU 8 kHz)."""

    carrier, label = "signalwire", "SignalWire"

    @classmethod
    def new_call_id(cls) -> str:
        return str(uuid.uuid4())

    def _sequence(self) -> str:
        self._seq += 1
        return str(self._seq)

    def opening(self) -> list[Frame]:
        return [json.dumps({"event": "connected", "protocol": "Call", "version": "0.2.0"}),
                json.dumps({"event": "start", "sequenceNumber": self._sequence(), "start": {
                    "streamSid": self.stream_sid, "accountSid": PROJECT_ID, "callSid": self.call_sid,
                    "tracks": ["inbound"], "customParameters": self.custom_parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})]

    def media(self, frame: bytes, k: int, track: str) -> Frame:
        return json.dumps({"event": "media", "sequenceNumber": self._sequence(), "media": {
            "track": track, "chunk": str(k + 1), "timestamp": str(k * FRAME_MS),
            "payload": base64.b64encode(frame).decode("ascii")}})

    def echo(self, name: str) -> Frame:
        return json.dumps({"event": "mark", "sequenceNumber": self._sequence(), "streamSid": self.stream_sid,
                           "mark": {"name": name}})

    def hang_up_frames(self) -> list[Frame]:
        return [json.dumps({"event": "stop", "sequenceNumber": self._sequence()})]

    def interpret(self, raw: str | bytes) -> tuple[dict[str, Any], Action]:
        if isinstance(raw, bytes):
            raise CarrierProtocolError("a binary frame: SignalWire takes JSON text")
        msg = json.loads(raw)
        self.check(msg)
        if msg.get("streamSid") != self.stream_sid:
            raise CarrierProtocolError(f"{msg.get('event')} without this stream's streamSid")
        return media_stream_action(msg)


CARRIER = Carrier("signalwire", VOICE_PATH, MEDIA_STREAM_PATH, SignalWireCallSimulator, "SIGNALWIRE_SIGNING_KEY",
                  webhook_fields, signer_from_env, generated, parse_cxml)
