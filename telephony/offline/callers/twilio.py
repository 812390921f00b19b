"""Twilio's side of a call: its signed voice webhook (X-Twilio-Signature, ``TWILIO_AUTH_TOKEN``),
the TwiML ``<Connect><Stream>`` it reads, and Media Streams (``simulator.TwilioCallSimulator``)."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from typing import Any, Mapping

from telephony.offline.callers.base import Carrier, DialError, Signer, StreamInstructions
from telephony.offline.simulator import TwilioCallSimulator
from telephony.wire.twiml import MEDIA_STREAM_PATH, VOICE_PATH

ACCOUNT_SID = "AC" + "0" * 32


def parse_twiml(xml: str) -> StreamInstructions:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DialError(f"the webhook's answer is not XML: {exc}") from None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise DialError("the TwiML has no <Connect><Stream url=…>")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return StreamInstructions(stream.get("url", ""), parameters)


def webhook_fields(call_id: str, caller: str, callee: str) -> dict[str, str]:
    return {"CallSid": call_id, "AccountSid": ACCOUNT_SID, "From": caller, "To": callee,
            "Direction": "inbound", "CallStatus": "ringing"}


def signer(auth_token: str) -> Signer:
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(auth_token)
    return lambda method, url, fields, body: {"X-Twilio-Signature": validator.compute_signature(url, dict(fields))}


def signer_from_env(env: Mapping[str, str], options: Mapping[str, Any]) -> Signer | None:
    token = env.get("TWILIO_AUTH_TOKEN", "").strip()
    return signer(token) if token else None


def generated() -> tuple[dict[str, Any], dict[str, str]]:
    token = secrets.token_hex(16)
    return {"twilio_auth_token": token, "twilio_validate_signatures": True}, {"TWILIO_AUTH_TOKEN": token}


CARRIER = Carrier("twilio", VOICE_PATH, MEDIA_STREAM_PATH, TwilioCallSimulator, "TWILIO_AUTH_TOKEN",
                  webhook_fields, signer_from_env, generated, parse_twiml)
