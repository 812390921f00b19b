"""Call control through Twilio's REST API (the twilio package): place, hang up, redirect.

``TWILIO_API_BASE_URL`` sends every request to another base URL (a Twilio-compatible provider,
or the fake Twilio server the tests run on loopback) by rewriting the host of each request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from telephony.serve.carriers import CarrierError
from telephony.settings import Settings
from telephony.wire.twiml import transfer as transfer_twiml

REQUEST_TIMEOUT_S = 10.0
TWILIO_API = "https://api.twilio.com"


class TwilioError(CarrierError):
    """Twilio refused a request: ``status`` is its HTTP status, the text is Twilio's message."""


class HttpxTwilioClient(AsyncHttpClient):
    """The twilio package's async HTTP client interface on httpx (pooled, with our deadline).

    Async, not the blocking requests client in a thread: threads are shared with everything else
    that runs in asyncio's default pool (timed-out sync tools among them), and hang-up, transfer,
    handoff and AMD redirects must never queue behind them. ``base_url`` sends every request to
    another host (TWILIO_API_BASE_URL: a Twilio-compatible provider, or the tests' fake)."""

    def __init__(self, base_url: str | None = None, timeout: float = REQUEST_TIMEOUT_S) -> None:
        super().__init__(logging.getLogger("telephony.twilio_rest"), is_async=True, timeout=timeout)
        base = urlsplit(base_url or TWILIO_API)
        self._scheme, self._netloc, self._prefix = base.scheme, base.netloc, base.path.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def request(self, method, uri, params=None, data=None, headers=None, auth=None, timeout=None,
                      allow_redirects=False) -> TwilioResponse:
        parts = urlsplit(uri)
        url = urlunsplit((self._scheme, self._netloc, self._prefix + parts.path, parts.query, ""))
        response = await self._http.request(method, url, params=params, data=data, headers=headers, auth=auth,
                                            timeout=timeout or self.timeout)
        return TwilioResponse(response.status_code, response.text, response.headers)

    async def aclose(self) -> None:
        await self._http.aclose()


@dataclass(frozen=True)
class PlacedCall:
    sid: str
    status: str


class CallControl:
    """Twilio's REST API for calls, awaited on the event loop (no threads); Twilio's ``CarrierControl``."""

    label = "Twilio"

    def __init__(self, settings: Settings, timeout: float = REQUEST_TIMEOUT_S) -> None:
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            raise TwilioError(503, "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set")
        self._connect(settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_api_base_url, timeout)

    def _connect(self, account: str, token: str, base_url: str | None, timeout: float) -> None:
        """The twilio package's client on our httpx transport, for this account at ``base_url``
        (a Twilio-compatible API: SignalWire's LaML API is one, carriers/signalwire.py)."""
        self._http = HttpxTwilioClient(base_url, timeout)
        self._client = Client(account, token, http_client=self._http)

    async def place(self, to: str, from_: str, answer_url: str, status_callback: str,
                    amd_callback: str | None) -> PlacedCall:
        options: dict = {}
        if amd_callback:
            options = {"machine_detection": "DetectMessageEnd", "async_amd": "true",
                       "async_amd_status_callback": amd_callback,
                       "async_amd_status_callback_method": "POST"}
        call = await self._call(self._client.calls.create_async(
            to=to, from_=from_, url=answer_url, method="POST", status_callback=status_callback,
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            status_callback_method="POST", **options))
        return PlacedCall(call.sid, call.status)

    async def hang_up(self, call_sid: str) -> None:
        await self._call(self._client.calls(call_sid).update_async(status="completed"))

    async def redirect(self, call_sid: str, twiml: str) -> None:
        await self._call(self._client.calls(call_sid).update_async(twiml=twiml))

    async def move(self, call_sid: str, answer_url: str) -> None:
        """The live call fetches new markup from ``answer_url`` (a handoff by URL, where the carrier
        verifies fetching it as every webhook: SignalWire's, whose inline ``Twiml`` is unverified)."""
        await self._call(self._client.calls(call_sid).update_async(url=answer_url, method="POST"))

    async def transfer(self, call_sid: str, target: str, by_refer: bool = False) -> None:
        """The carrier seam's transfer: the live call's TwiML becomes <Dial> (or <Refer>)."""
        await self.redirect(call_sid, transfer_twiml(target, by_refer))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, request):
        try:
            return await request
        except TwilioRestException as exc:
            raise TwilioError(exc.status, exc.msg or f"{self.label} refused the request", exc.code) from None
        except httpx.TimeoutException:
            raise TwilioError(504, f"{self.label} did not answer in time") from None
        except (httpx.TransportError, OSError) as exc:  # unreachable, reset
            raise TwilioError(502, f"{self.label} is unreachable: {type(exc).__name__}") from None
