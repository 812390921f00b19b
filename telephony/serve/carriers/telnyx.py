"""Telnyx's control adapter: its webhook signatures and its Call Control REST API.

Webhooks (PROTOCOLS-carriers.md, Telnyx §2, after telnyx-python's webhook_verification.py):
``telnyx-signature-ed25519`` is base64 of an Ed25519 signature over ``"{timestamp}|{raw body}"``,
``telnyx-timestamp`` Unix seconds, checked against the account's public key (``TELNYX_PUBLIC_KEY``,
base64 of 32 bytes) with ``cryptography``; a timestamp more than 300 s away is refused (a replay).

REST (§4): ``TELNYX_API_BASE_URL`` (default https://api.telnyx.com) + ``/v2/…``, Bearer
``TELNYX_API_KEY``. Outbound: ``POST /v2/calls`` on the Call Control application
``TELNYX_CONNECTION_ID`` with the stream (``stream_url``, rtp, PCMU) and our signed stream
parameters as ``client_state``. Hang-up: ``…/actions/hangup`` (422 with code 90018: already over,
as pipecat reads it). Transfer: ``…/actions/transfer`` ``{to}``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from telephony.serve.carriers import CarrierError
from telephony.settings import Settings

log = logging.getLogger("telephony.telnyx")

TELNYX_API = "https://api.telnyx.com"
REQUEST_TIMEOUT_S = 10.0
TOLERANCE_S = 300  # the SDK's: a signed webhook older or newer than this is refused
ALREADY_ENDED = "90018"  # Telnyx's error code for an action on a call that has ended

# AMD, Call Control → the verdicts the core takes (Twilio's AnsweredBy words, its neutral vocabulary).
AMD_VERDICTS = {("call.machine.detection.ended", "human"): "human",
                ("call.machine.detection.ended", "machine"): "machine_start",
                ("call.machine.detection.ended", "not_sure"): "unknown",
                ("call.machine.greeting.ended", "beep_detected"): "machine_end_beep",
                ("call.machine.greeting.ended", "ended"): "machine_end_other",
                ("call.machine.greeting.ended", "not_sure"): "machine_end_other"}


def public_key(text: str) -> Ed25519PublicKey:
    """TELNYX_PUBLIC_KEY (base64 of the raw 32-byte key, as Mission Control shows it)."""
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ValueError("TELNYX_PUBLIC_KEY must be the base64 Ed25519 public key (32 bytes)") from None


def signature_refusal(key: Ed25519PublicKey, headers: Any, body: bytes, now: float) -> str | None:
    """None when the webhook is Telnyx's; else why not (never quoting the headers' values)."""
    signature, timestamp = headers.get("telnyx-signature-ed25519"), headers.get("telnyx-timestamp")
    if not signature or not timestamp:
        return "no telnyx-signature-ed25519 / telnyx-timestamp"
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return "telnyx-timestamp is not Unix seconds"
    if abs(now - int(timestamp)) > TOLERANCE_S:
        return f"telnyx-timestamp is {now - int(timestamp):.0f} s off (over {TOLERANCE_S} s)"
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body)
    except (binascii.Error, ValueError, InvalidSignature):
        return "signature does not match"
    return None


def amd_verdict(event: dict) -> tuple[str, str] | None:
    """(call_control_id, verdict) from a Call Control AMD webhook; None for any other event."""
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
    kind = str(data.get("event_type", "")).replace(".premium", "")
    verdict = AMD_VERDICTS.get((kind, str(payload.get("result", ""))))
    call_id = payload.get("call_control_id")
    return (call_id, verdict) if verdict and isinstance(call_id, str) else None


@dataclass(frozen=True)
class PlacedCall:
    call_control_id: str


class TelnyxControl:
    """Telnyx's ``CarrierControl``: Call Control REST on httpx, awaited on the loop."""

    def __init__(self, settings: Settings, timeout: float = REQUEST_TIMEOUT_S) -> None:
        if not settings.telnyx_api_key:
            raise CarrierError(503, "TELNYX_API_KEY is not set")
        self.connection_id = settings.telnyx_connection_id
        self._http = httpx.AsyncClient(base_url=(settings.telnyx_api_base_url or TELNYX_API) + "/v2",
                                       headers={"Authorization": f"Bearer {settings.telnyx_api_key}"},
                                       timeout=timeout, follow_redirects=False)

    async def place(self, to: str, from_: str, stream_url: str, client_state: str, webhook_url: str,
                    machine_detection: bool) -> PlacedCall:
        if not self.connection_id:
            raise CarrierError(503, "TELNYX_CONNECTION_ID is not set")
        body: dict[str, Any] = {
            "connection_id": self.connection_id, "to": to, "from": from_, "stream_url": stream_url,
            "stream_track": "inbound_track", "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU", "client_state": client_state, "webhook_url": webhook_url,
            "webhook_url_method": "POST"}
        if machine_detection:
            body["answering_machine_detection"] = "detect_beep"
        data = await self._post("/calls", body)
        call_id = (data.get("data") or {}).get("call_control_id") if isinstance(data, dict) else None
        if not isinstance(call_id, str) or not call_id:
            raise CarrierError(502, "Telnyx answered without a call_control_id")
        return PlacedCall(call_id)

    async def hang_up(self, call_id: str) -> None:
        try:
            await self._post(f"/calls/{_quoted(call_id)}/actions/hangup", {})
        except CarrierError as exc:
            if exc.status != 422 or str(exc.code) != ALREADY_ENDED:
                raise
            log.info("Telnyx: the call had already ended")  # what we wanted

    async def transfer(self, call_id: str, target: str, by_refer: bool = False) -> None:
        # Call Control's transfer dials ``to`` (a number or sip: URI) and bridges the caller to it.
        await self._post(f"/calls/{_quoted(call_id)}/actions/transfer", {"to": target})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict) -> Any:
        try:
            response = await self._http.post(path, json=body)
        except httpx.TimeoutException:
            raise CarrierError(504, "Telnyx did not answer in time") from None
        except (httpx.TransportError, OSError) as exc:
            raise CarrierError(502, f"Telnyx is unreachable: {type(exc).__name__}") from None
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            error = (data.get("errors") or [{}])[0] if isinstance(data, dict) else {}
            error = error if isinstance(error, dict) else {}
            raise CarrierError(response.status_code, str(error.get("detail") or error.get("title")
                                                         or f"HTTP {response.status_code}"), error.get("code"))
        return data


def _quoted(call_id: str) -> str:
    from urllib.parse import quote

    return quote(call_id, safe=":")


def now() -> float:
    return time.time()
