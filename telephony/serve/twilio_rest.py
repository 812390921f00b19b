"""Call control through Twilio's REST API (the twilio package): place, hang up, redirect.

``TWILIO_API_BASE_URL`` sends every request to another base URL (a Twilio-compatible provider,
or the fake Twilio server the tests run on loopback) by rewriting the host of each request.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from telephony.settings import Settings

REQUEST_TIMEOUT_S = 10.0


class TwilioError(Exception):
    """Twilio refused a request: ``status`` is its HTTP status, the text is Twilio's message."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _RebasedHttpClient(TwilioHttpClient):
    def __init__(self, base_url: str) -> None:
        super().__init__(timeout=REQUEST_TIMEOUT_S)
        base = urlsplit(base_url)
        self._scheme, self._netloc, self._prefix = base.scheme, base.netloc, base.path.rstrip("/")

    def request(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        url = urlunsplit((self._scheme, self._netloc, self._prefix + parts.path, parts.query, ""))
        return super().request(method, url, *args, **kwargs)


@dataclass(frozen=True)
class PlacedCall:
    sid: str
    status: str


class CallControl:
    """Blocking calls (the twilio package uses requests): run them in a thread from async code."""

    def __init__(self, settings: Settings) -> None:
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            raise TwilioError(503, "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set")
        http = (_RebasedHttpClient(settings.twilio_api_base_url) if settings.twilio_api_base_url
                else TwilioHttpClient(timeout=REQUEST_TIMEOUT_S))
        self._client = Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http)

    def place(self, to: str, from_: str, answer_url: str, status_callback: str,
              amd_callback: str | None) -> PlacedCall:
        options: dict = {}
        if amd_callback:
            options = {"machine_detection": "DetectMessageEnd", "async_amd": "true",
                       "async_amd_status_callback": amd_callback,
                       "async_amd_status_callback_method": "POST"}
        call = self._call(lambda: self._client.calls.create(
            to=to, from_=from_, url=answer_url, method="POST", status_callback=status_callback,
            status_callback_event=["initiated", "ringing", "answered", "completed"],
            status_callback_method="POST", **options))
        return PlacedCall(call.sid, call.status)

    def hang_up(self, call_sid: str) -> None:
        self._call(lambda: self._client.calls(call_sid).update(status="completed"))

    def redirect(self, call_sid: str, twiml: str) -> None:
        self._call(lambda: self._client.calls(call_sid).update(twiml=twiml))

    @staticmethod
    def _call(request):
        try:
            return request()
        except TwilioRestException as exc:
            raise TwilioError(exc.status, exc.msg or "Twilio refused the request", exc.code) from None
        except OSError as exc:  # unreachable, reset, timed out (requests' errors are OSErrors)
            raise TwilioError(502, f"Twilio is unreachable: {type(exc).__name__}") from None
