"""Plivo's control adapter: its V3 webhook signatures and its REST API.

Webhooks (PROTOCOLS-carriers.md, Plivo §2, as plivo-python's utils/signature_v3.py computes it):
``X-Plivo-Signature-V3`` is base64(HMAC-SHA256(auth token, URL + "." + nonce)) with the nonce from
``X-Plivo-Signature-V3-Nonce``; the header may hold several, comma-separated. For a POST the URL is
scheme://host/path, then "?" + its own query sorted as ``k=v&…`` (+ "." when it had one), then the
form's fields sorted by name as ``namevalue…``; for a GET, "?" + query and fields sorted as
``k=v&…``. The URL is ours (``PUBLIC_URL`` + path + query), not the Host header's.

REST (§4): ``PLIVO_API_BASE_URL`` (default https://api.plivo.com) + ``/v1/Account/{auth_id}/…``,
HTTP Basic auth_id:auth_token, JSON bodies, paths ending in "/". Outbound ``POST Call/`` (Plivo
fetches ``answer_url``, ours, when the callee answers); hang-up ``DELETE Call/{uuid}/`` (404:
already over); transfer ``POST Call/{uuid}/`` ``{legs: aleg, aleg_url}`` (Plivo fetches new XML).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from telephony.serve.carriers import CarrierError
from telephony.settings import Settings

log = logging.getLogger("telephony.plivo")

PLIVO_API = "https://api.plivo.com"
REQUEST_TIMEOUT_S = 10.0


def _sorted_pairs(pairs: list[tuple[str, str]], joiner: str, between: str) -> str:
    return joiner.join(f"{k}{between}{v}" for k, v in sorted(pairs))


def signed_text(method: str, url: str, fields: list[tuple[str, str]]) -> str:
    """What Plivo signs for a request to ``url`` (with its query) carrying ``fields``."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if method == "GET":
        joined = _sorted_pairs(query + fields, "&", "=")
        return f"{base}?{joined}" if joined else base
    if not fields:
        return f"{base}?{_sorted_pairs(query, '&', '=')}" if query else base
    text = f"{base}?{_sorted_pairs(query, '&', '=')}" + ("." if query else "")
    return text + _sorted_pairs(fields, "", "")


def signature(auth_token: str, text: str, nonce: str) -> str:
    digest = hmac.new(auth_token.encode(), f"{text}.{nonce}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def signature_refusal(auth_token: str, headers: Mapping[str, str], method: str, url: str,
                      fields: list[tuple[str, str]]) -> str | None:
    """None when the webhook is Plivo's; else why not (never quoting the headers' values)."""
    given, nonce = headers.get("x-plivo-signature-v3"), headers.get("x-plivo-signature-v3-nonce")
    if not given or not nonce:
        return "no X-Plivo-Signature-V3 / X-Plivo-Signature-V3-Nonce"
    expected = signature(auth_token, signed_text(method, url, fields), nonce).encode()
    if not any(hmac.compare_digest(expected, candidate.strip().encode()) for candidate in given.split(",")):
        return "signature does not match"
    return None


def amd_verdict(fields: Mapping[str, str]) -> str | None:
    """The core's verdict from Plivo's machine_detection_url: ``Machine`` true or false. Plivo says
    no more than that (no beep), so a machine leaves its message at once (Twilio's
    ``machine_end_other``); unverified how long after the greeting's start Plivo decides."""
    machine = str(fields.get("Machine", "")).lower()
    return {"true": "machine_end_other", "false": "human"}.get(machine)


@dataclass(frozen=True)
class PlacedCall:
    request_uuid: str


class PlivoControl:
    """Plivo's ``CarrierControl``: REST on httpx, awaited on the loop. ``transfer_url(target)``
    makes the signed URL of our XML that dials the target (Plivo's transfer fetches a URL)."""

    def __init__(self, settings: Settings, transfer_url=None, timeout: float = REQUEST_TIMEOUT_S) -> None:
        if not settings.plivo_auth_id or not settings.plivo_auth_token:
            raise CarrierError(503, "PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN are not set")
        self.transfer_url = transfer_url
        base = (settings.plivo_api_base_url or PLIVO_API) + f"/v1/Account/{quote(settings.plivo_auth_id, safe='')}"
        self._http = httpx.AsyncClient(base_url=base, auth=(settings.plivo_auth_id, settings.plivo_auth_token),
                                       timeout=timeout, follow_redirects=False)

    async def place(self, to: str, from_: str, answer_url: str, hangup_url: str,
                    machine_detection_url: str | None) -> PlacedCall:
        body: dict[str, Any] = {"from": from_.lstrip("+"), "to": to.lstrip("+"), "answer_url": answer_url,
                                "answer_method": "POST", "hangup_url": hangup_url, "hangup_method": "POST"}
        if machine_detection_url:
            body.update(machine_detection="true", machine_detection_url=machine_detection_url,
                        machine_detection_method="POST")
        data = await self._request("POST", "/Call/", body)
        uuid = data.get("request_uuid") if isinstance(data, dict) else None
        if isinstance(uuid, list):  # the SDK's docs show a list for bulk calls
            uuid = uuid[0] if uuid else None
        if not isinstance(uuid, str) or not uuid:
            raise CarrierError(502, "Plivo answered without a request_uuid")
        return PlacedCall(uuid)

    async def hang_up(self, call_id: str) -> None:
        try:
            await self._request("DELETE", f"/Call/{quote(call_id, safe='')}/")
        except CarrierError as exc:
            if exc.status != 404:
                raise
            log.info("Plivo: the call had already ended")  # what we wanted

    async def transfer(self, call_id: str, target: str, by_refer: bool = False) -> None:
        if self.transfer_url is None:
            raise CarrierError(503, "transfers on Plivo need PUBLIC_URL")
        await self._request("POST", f"/Call/{quote(call_id, safe='')}/",
                            {"legs": "aleg", "aleg_url": self.transfer_url(target), "aleg_method": "POST"})

    async def move(self, call_id: str, answer_url: str) -> None:
        """The live call's A leg fetches new XML from ``answer_url`` (a handoff): Plivo's transfer."""
        await self._request("POST", f"/Call/{quote(call_id, safe='')}/",
                            {"legs": "aleg", "aleg_url": answer_url, "aleg_method": "POST"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TimeoutException:
            raise CarrierError(504, "Plivo did not answer in time") from None
        except (httpx.TransportError, OSError) as exc:
            raise CarrierError(502, f"Plivo is unreachable: {type(exc).__name__}") from None
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = {}
        if response.status_code >= 400:
            detail = data.get("error") if isinstance(data, dict) else None
            raise CarrierError(response.status_code, str(detail or f"HTTP {response.status_code}"))
        return data
