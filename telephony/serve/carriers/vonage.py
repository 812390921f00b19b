"""Vonage's control adapter: its signed webhooks (HS256 JWTs) and its Voice REST API (RS256 JWTs).

Webhooks (PROTOCOLS-carriers.md, Vonage §2): ``Authorization: Bearer <JWT>`` signed HS256 with
the account's signature secret (``VONAGE_SIGNATURE_SECRET``), as vonage-jwt's ``verify_signature``
decodes it, plus the ``payload_hash`` claim: hex SHA-256 of the body, which that SDK leaves to the
app and we check. A GET's payload is its query parameters as a compact JSON object, in order (the
support article's words; unverified against a real call, so a GET token without the claim is
taken on its signature alone). An ``iat`` more than ``MAX_AGE_S`` old is refused (a replay).

REST (§4): ``VONAGE_API_BASE_URL`` (default https://api.nexmo.com) + ``/v1/calls``, Bearer JWT
RS256 signed with the application's private key (``VONAGE_PRIVATE_KEY``, a PEM file) with the
claims vonage-jwt's ``generate_application_jwt`` sets: ``application_id``, ``iat``, ``jti``,
``exp`` (15 minutes). Outbound: ``POST /v1/calls`` with our answer URL (Vonage names the call's
uuid in the answer webhook, which puts it in the stream's signed headers) and
``machine_detection: continue``; hang-up ``PUT /v1/calls/{uuid}`` ``{"action":"hangup"}``;
transfer ``PUT /v1/calls/{uuid}`` ``{"action":"transfer","destination":{"type":"ncco","ncco":…}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from telephony.serve.carriers import CarrierError
from telephony.settings import Settings
from telephony.wire import vonage as vonage_wire

log = logging.getLogger("telephony.vonage")

VONAGE_API = "https://api.nexmo.com"
REQUEST_TIMEOUT_S = 10.0
JWT_TTL_S = 15 * 60  # vonage-jwt's default lifetime
MAX_AGE_S = 300  # a signed webhook whose iat is older than this is refused (a replay)
LEEWAY_S = 30  # clock skew allowed on exp/iat


def payload_of_query(pairs: list[tuple[str, str]]) -> bytes:
    """What Vonage hashes for a GET: the query parameters as a JSON object, no whitespace, in order."""
    return json.dumps(dict(pairs), separators=(",", ":"), ensure_ascii=False).encode()


def signature_refusal(secret: str, headers: Mapping[str, str], payload: bytes, now: float,
                      hash_required: bool = True) -> str | None:
    """None when the webhook is Vonage's; else why not (never quoting the token or the secret).
    ``payload``: the body (or a GET's query as ``payload_of_query``); ``hash_required``: whether a
    token without ``payload_hash`` is refused (a POST's) or judged on its signature (a GET's)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "no Authorization: Bearer JWT"
    try:
        claims = jwt.decode(token.strip(), secret, algorithms=["HS256"], leeway=LEEWAY_S,
                            options={"verify_aud": False})
    except jwt.InvalidSignatureError:
        return "JWT signature does not match"
    except jwt.ExpiredSignatureError:
        return "JWT has expired"
    except jwt.PyJWTError as exc:
        return f"JWT is not valid ({type(exc).__name__})"
    iat = claims.get("iat")
    if isinstance(iat, (int, float)) and now - iat > MAX_AGE_S + LEEWAY_S:
        return f"JWT was issued {now - iat:.0f} s ago"
    expected = claims.get("payload_hash")
    if expected is None and not hash_required:
        return None
    if not isinstance(expected, str):
        return "JWT without a payload_hash claim"
    if not hmac.compare_digest(expected.lower().encode(), hashlib.sha256(payload).hexdigest().encode()):
        return "payload_hash does not match the request"
    return None


def amd_verdict(event: Mapping[str, Any]) -> tuple[str, str] | None:
    """(Vonage's call uuid, the core's verdict) from an event webhook's AMD result: ``status``
    human or machine, the call in ``call_uuid`` (not ``uuid``). Basic machine detection says no
    more (no beep): a machine then hears the message at once (Twilio's ``machine_end_other``)."""
    verdict = {"human": "human", "machine": "machine_end_other"}.get(str(event.get("status", "")))
    call_uuid = event.get("call_uuid") or event.get("uuid")
    if verdict is None or not isinstance(call_uuid, str) or not call_uuid:
        return None
    return call_uuid, verdict


def load_private_key(path: str | Path):
    """The application's private key (PEM): read once; a clear error without its content."""
    try:
        return load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise CarrierError(503, f"VONAGE_PRIVATE_KEY: cannot read the key file ({exc.strerror})") from None
    except (ValueError, TypeError):
        raise CarrierError(503, "VONAGE_PRIVATE_KEY: the file is not a PEM private key without a password") from None


@dataclass(frozen=True)
class PlacedCall:
    uuid: str
    status: str


class VonageControl:
    """Vonage's ``CarrierControl``: REST on httpx, awaited on the loop. ``caller_id(uuid)``: our
    number on that call, the ``from`` of a transfer's connect (else Vonage picks one of ours)."""

    def __init__(self, settings: Settings, caller_id: Callable[[str], str | None] | None = None,
                 timeout: float = REQUEST_TIMEOUT_S) -> None:
        if not settings.vonage_application_id or not settings.vonage_private_key:
            raise CarrierError(503, "VONAGE_APPLICATION_ID and VONAGE_PRIVATE_KEY are not set")
        self.application_id = settings.vonage_application_id
        self._key = load_private_key(settings.vonage_private_key)
        self.caller_id = caller_id or (lambda call_id: None)
        self._http = httpx.AsyncClient(base_url=settings.vonage_api_base_url or VONAGE_API, timeout=timeout,
                                       follow_redirects=False)

    def application_jwt(self, now: float | None = None) -> str:
        iat = int(time.time() if now is None else now)
        claims = {"application_id": self.application_id, "iat": iat, "exp": iat + JWT_TTL_S,
                  "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"typ": "JWT"})

    async def place(self, to: str, from_: str, answer_url: str, event_url: str,
                    machine_detection: bool) -> PlacedCall:
        body: dict[str, Any] = {"to": [{"type": "phone", "number": to.lstrip("+")}],
                                "from": {"type": "phone", "number": from_.lstrip("+")},
                                "answer_url": [answer_url], "answer_method": "POST",
                                "event_url": [event_url], "event_method": "POST"}
        if machine_detection:
            body["machine_detection"] = "continue"  # the verdict comes to event_url; we decide
        data = await self._request("POST", "/v1/calls", body)
        call_uuid = data.get("uuid") if isinstance(data, dict) else None
        if not isinstance(call_uuid, str) or not vonage_wire.valid_uuid(call_uuid):
            raise CarrierError(502, "Vonage answered without a call uuid")
        return PlacedCall(call_uuid, str(data.get("status") or "started"))

    async def hang_up(self, call_id: str) -> None:
        try:
            await self._request("PUT", f"/v1/calls/{quote(call_id, safe='')}", {"action": "hangup"})
        except CarrierError as exc:
            if exc.status != 404:
                raise
            log.info("Vonage: the call had already ended")  # what we wanted

    async def transfer(self, call_id: str, target: str, by_refer: bool = False) -> None:
        # (No REFER on Vonage: the leg is moved to a new NCCO that connects it to the target.)
        ncco = vonage_wire.connect_target_ncco(target, self.caller_id(call_id))
        await self._request("PUT", f"/v1/calls/{quote(call_id, safe='')}",
                            {"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})

    async def move(self, call_id: str, ncco: list[dict]) -> None:
        """A handoff: the leg is transferred to ``ncco`` (a new stream to us), inline."""
        await self._request("PUT", f"/v1/calls/{quote(call_id, safe='')}",
                            {"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: dict) -> Any:
        headers = {"Authorization": f"Bearer {self.application_jwt()}"}
        try:
            response = await self._http.request(method, path, json=body, headers=headers)
        except httpx.TimeoutException:
            raise CarrierError(504, "Vonage did not answer in time") from None
        except (httpx.TransportError, OSError) as exc:
            raise CarrierError(502, f"Vonage is unreachable: {type(exc).__name__}") from None
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = {}
        if response.status_code >= 400:
            detail = (data.get("title") or data.get("detail")) if isinstance(data, dict) else None
            raise CarrierError(response.status_code, str(detail or f"HTTP {response.status_code}")[:200])
        return data
