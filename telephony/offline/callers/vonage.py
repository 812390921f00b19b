"""Vonage's side of a Voice API call, after ../shared/PROTOCOLS-carriers.md (Vonage).

- Webhook: the application's answer URL, here POSTed as JSON (``uuid``, ``conversation_uuid``,
  ``from``, ``to``: numbers as digits without "+"), signed as Vonage signs webhooks: an HS256 JWT
  in ``Authorization: Bearer`` keyed with the signature secret (``VONAGE_SIGNATURE_SECRET``),
  whose ``payload_hash`` is the body's SHA-256.
- Answer: an NCCO whose ``connect`` names a ``websocket`` endpoint (``audio/l16;rate=16000``) and
  the ``headers`` Vonage hands back in its first message.
- Media: ``websocket:connected`` (the endpoint's headers at the top level), then binary 16-bit
  PCM at 16 kHz, 640 bytes (20 ms) a frame, both ways; the app's ``{"action":"clear"}`` empties
  the queue (answered ``websocket:cleared``). No marks: the app plays by its own clock.
"""

from __future__ import annotations

import audioop
import hashlib
import json
import secrets
import time
import uuid
from typing import Any, Mapping

from telephony.offline.callers.base import Carrier, DialError, Signer, StreamInstructions
from telephony.offline.simulator import Action, Audio, CallSimulator, CarrierProtocolError, Clear, Frame
from telephony.wire.vonage import CONTENT_TYPE, MEDIA_STREAM_PATH, VOICE_PATH

FRAME_BYTES = 640  # 20 ms of 16-bit PCM at 16 kHz


def parse_ncco(text: str) -> StreamInstructions:
    try:
        ncco = json.loads(text)
    except ValueError as exc:
        raise DialError(f"the webhook's answer is not JSON (an NCCO): {exc}") from None
    connect = next((a for a in ncco if isinstance(a, dict) and a.get("action") == "connect"), None) \
        if isinstance(ncco, list) else None
    endpoint = (connect.get("endpoint") or [{}])[0] if connect else {}
    if endpoint.get("type") != "websocket" or not endpoint.get("uri"):
        raise DialError("the NCCO does not connect the call to a websocket")
    if str(endpoint.get("content-type", "")).replace(" ", "").lower() != CONTENT_TYPE:
        raise DialError(f"the NCCO asks for {endpoint.get('content-type')!r}: this caller plays {CONTENT_TYPE} only")
    headers = endpoint.get("headers") or {}
    return StreamInstructions(endpoint["uri"], {str(k): str(v) for k, v in headers.items()})


def webhook_fields(call_id: str, caller: str, callee: str) -> dict[str, str]:
    return {"uuid": call_id, "conversation_uuid": "CON-" + str(uuid.uuid4()),
            "from": caller.lstrip("+"), "to": callee.lstrip("+")}


def signer(secret: str) -> Signer:
    import jwt

    def sign(method: str, url: str, fields: Mapping[str, str], body: bytes) -> dict[str, str]:
        claims = {"iat": int(time.time()), "jti": str(uuid.uuid4()), "iss": "Vonage",
                  "payload_hash": hashlib.sha256(body).hexdigest()}
        return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}
    return sign


def signer_from_env(env: Mapping[str, str], options: Mapping[str, Any]) -> Signer | None:
    secret = env.get("VONAGE_SIGNATURE_SECRET", "").strip()
    return signer(secret) if secret else None


def generated() -> tuple[dict[str, Any], dict[str, str]]:
    secret = secrets.token_hex(24)
    return ({"vonage_signature_secret": secret, "vonage_validate_signatures": True},
            {"VONAGE_SIGNATURE_SECRET": secret})


class VonageCallSimulator(CallSimulator):
    """Vonage's websocket for an NCCO ``connect``: L16 16 kHz binary frames, converted from and to
    the simulator's μ-law 8 kHz (so its recording is like every carrier's)."""

    carrier, label = "vonage", "Vonage"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._up = self._down = None  # the resamplers' states, one per direction

    @classmethod
    def new_call_id(cls) -> str:
        return str(uuid.uuid4())

    def opening(self) -> list[Frame]:
        return [json.dumps({"event": "websocket:connected", "content-type": CONTENT_TYPE,
                            **self.custom_parameters})]

    def media(self, frame: bytes, k: int, track: str) -> Frame:
        pcm, self._up = audioop.ratecv(audioop.ulaw2lin(frame, 2), 2, 1, 8000, 16000, self._up)
        return pcm[:FRAME_BYTES].ljust(FRAME_BYTES, b"\0")

    def echo(self, name: str) -> Frame:
        raise CarrierProtocolError("Vonage has no marks to echo")

    def cleared(self) -> list[Frame]:
        return [json.dumps({"event": "websocket:cleared"})]

    def interpret(self, raw: str | bytes) -> tuple[dict[str, Any], Action]:
        if isinstance(raw, bytes):
            if len(raw) != FRAME_BYTES:
                raise CarrierProtocolError(f"a {len(raw)}-byte frame: Vonage takes exactly {FRAME_BYTES}")
            pcm, self._down = audioop.ratecv(raw, 2, 1, 16000, 8000, self._down)
            return {"event": "media", "bytes": len(raw)}, Audio(audioop.lin2ulaw(pcm, 2))
        msg = json.loads(raw)
        self.check(msg)
        if msg.get("action") == "clear":
            return msg, Clear()
        if msg.get("action") == "mark" or msg.get("event") == "mark":
            raise CarrierProtocolError("a mark: Vonage has none")
        return msg, None


CARRIER = Carrier("vonage", VOICE_PATH, MEDIA_STREAM_PATH, VonageCallSimulator, "VONAGE_SIGNATURE_SECRET",
                  webhook_fields, signer_from_env, generated, parse_ncco, webhook_json=True)
