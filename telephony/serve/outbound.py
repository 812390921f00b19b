"""Outbound call requests: validating `POST /calls` bodies and the URL Twilio answers them with."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Collection
from urllib.parse import urlencode

from telephony.core.barge_in import BargeInError, parse_settings
from telephony.core.tools import E164
from telephony.serve.security import OUTBOUND_ANSWER, StreamTokens
from telephony.serve.twilio_rest import CallControl, PlacedCall
from telephony.wire.twiml import (
    AMD_CALLBACK_PATH,
    OUTBOUND_ANSWER_PATH,
    STATUS_CALLBACK_PATH,
)

CARRIERS = ("twilio", "telnyx", "signalwire", "plivo", "vonage")  # POST /calls "carrier"
MAX_METADATA_BYTES = 512
MAX_TEXT = {"instructions": 2000, "voice": 40, "greeting": 400, "voicemail": 400}
# Twilio caps inline TwiML at 4000 characters (its error 32018); we hold the answer URL, which
# carries the overrides, to the same bound.
URL_LIMIT = 4000


class RequestError(ValueError):
    """A request we refuse; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class OutboundRequest:
    to: str
    from_: str
    overrides: dict[str, str] = field(default_factory=dict)  # instructions, voice, greeting, voicemail
    metadata: dict[str, Any] = field(default_factory=dict)
    machine_detection: bool = False
    profile: str = ""  # the profile named in the request ("": the one listing ``from_``, or the default)
    carrier: str = "twilio"  # whose REST API places the call (serve/carriers)

    def stream_parameters(self) -> dict[str, str]:
        params = {"direction": "outbound-api", "from": self.from_, "to": self.to, **self.overrides}
        if params.get("greeting") == "":  # TwiML drops empty parameters: say it with a flag
            del params["greeting"]
            params["silent_start"] = "1"
        if self.profile:
            params["profile"] = self.profile
        if self.metadata:
            params["metadata"] = json.dumps(self.metadata, separators=(",", ":"))
        return params


def parse_request(body: bytes, default_from: str, profiles: Collection[str] = ()) -> OutboundRequest:
    """``profiles``: the names a request may pick; any other is refused."""
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise RequestError(400, "body is not JSON") from None
    except RecursionError:
        raise RequestError(400, "body is nested too deeply") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body must be a JSON object")
    unknown = set(data) - {"to", "from", "machine_detection", "metadata", "profile", "barge_in", "carrier",
                           *MAX_TEXT}
    if unknown:
        raise RequestError(422, f"unknown fields: {', '.join(sorted(unknown))}")
    to = data.get("to")
    if not isinstance(to, str) or not E164.fullmatch(to):
        raise RequestError(422, "'to' must be an E.164 number such as +15551234567")
    carrier = data.get("carrier", "twilio")
    if carrier not in CARRIERS:
        raise RequestError(422, f"'carrier' must be one of {', '.join(CARRIERS)}")
    from_ = data.get("from", default_from if carrier == "twilio" else "")
    if not from_:
        raise RequestError(422, "'from' is missing and TWILIO_FROM_NUMBER is not set" if carrier == "twilio"
                           else f"'from' is required for carrier {carrier} (one of its numbers)")
    if not isinstance(from_, str) or not E164.fullmatch(from_):
        raise RequestError(422, "'from' must be an E.164 number such as +15551234567")
    overrides = {}
    for key, limit in MAX_TEXT.items():
        value = data.get(key)
        if value is None:
            continue
        if key == "greeting" and value == "":
            overrides[key] = ""  # the agent does not speak first: the callee does
            continue
        if not isinstance(value, str) or not value.strip():
            raise RequestError(422, f"'{key}' must be a non-empty string" +
                               (" (or \"\" for no greeting)" if key == "greeting" else ""))
        if len(value) > limit:
            raise RequestError(422, f"'{key}' is longer than {limit} characters")
        overrides[key] = value.strip()
    if "barge_in" in data:
        overrides["barge_in"] = _barge_in(data["barge_in"])
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise RequestError(422, "'metadata' must be a JSON object")
    try:
        encoded = json.dumps(metadata, separators=(",", ":"))
    except RecursionError:
        raise RequestError(400, "'metadata' is nested too deeply") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise RequestError(422, f"'metadata' is larger than {MAX_METADATA_BYTES} bytes")
    detect = data.get("machine_detection", False)
    if not isinstance(detect, bool):
        raise RequestError(422, "'machine_detection' must be true or false")
    profile = data.get("profile", "")
    if not isinstance(profile, str) or (profile and profile not in profiles):
        raise RequestError(422, f"'profile' must name a loaded profile: {', '.join(sorted(profiles)) or 'none'}")
    return OutboundRequest(to, from_, overrides, metadata, detect, profile, carrier)


def _barge_in(value: Any) -> str:
    """This call's ``[barge_in]`` settings, checked as a profile's are, as a compact JSON parameter."""
    if not isinstance(value, dict):
        raise RequestError(422, "'barge_in' must be a JSON object of [barge_in] settings")
    try:
        parse_settings(value, "'barge_in'")
    except BargeInError as exc:
        raise RequestError(422, str(exc)) from None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def answer_url(req: OutboundRequest, public_base: str, signer: StreamTokens, now: float,
               path: str = OUTBOUND_ANSWER_PATH) -> str:
    """Where Twilio fetches the call's TwiML once it is answered.

    The call sid does not exist until Twilio creates the call, so the stream token (bound to the
    sid) can only be made then: the overrides ride in this URL, signed with the stream key so no
    one else can forge them, and ``/twilio/outbound`` turns them into the stream's parameters.
    """
    signed = signer.with_token(req.stream_parameters(), now, OUTBOUND_ANSWER)
    url = f"{public_base}{path}?{urlencode(signed)}"
    if len(url) > URL_LIMIT:
        raise RequestError(422, f"the call's answer URL would be {len(url)} characters; keep it under "
                                f"{URL_LIMIT}: shorten instructions, greeting or metadata")
    return url


async def place(control: CallControl, req: OutboundRequest, public_base: str, url: str) -> PlacedCall:
    """Raises TwilioError."""
    return await control.place(req.to, req.from_, url, f"{public_base}{STATUS_CALLBACK_PATH}",
                         f"{public_base}{AMD_CALLBACK_PATH}" if req.machine_detection else None)
