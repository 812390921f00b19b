"""Twilio's REST API, for operators: check the account credentials, point a number at us.

Calls are synchronous (the twilio client uses requests); the async callers run them in a thread.
Nothing here prints or logs the auth token.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from twilio.base.exceptions import TwilioRestException
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from telephony.settings import Settings
from telephony.wire.twiml import (
    MEDIA_STREAM_PATH,
    STATUS_CALLBACK_PATH,
    VOICE_PATH,
    websocket_url,
)

REST_TIMEOUT_S = 10.0


class TwilioAdminError(RuntimeError):
    """Something an operator must fix; the text says what (never a secret)."""


@dataclass(frozen=True)
class Webhooks:
    voice: str
    media_stream: str
    status: str


def webhooks(public_url: str) -> Webhooks:
    base = public_url.rstrip("/")
    return Webhooks(base + VOICE_PATH, websocket_url(base, MEDIA_STREAM_PATH), base + STATUS_CALLBACK_PATH)


def public_url_problems(public_url: str | None) -> list[str]:
    """Why Twilio could not use this base URL (empty when it can)."""
    if not public_url:
        return []
    parts = urlsplit(public_url)
    problems = []
    if parts.scheme != "https":
        problems.append("Twilio needs https:// (the media stream must be wss://)")
    if not parts.hostname:
        problems.append("no host name")
    elif parts.hostname in ("localhost", "127.0.0.1", "0.0.0.0", "::1"):
        problems.append(f"{parts.hostname} is not reachable from Twilio")
    if parts.query or parts.fragment:
        problems.append("a base URL takes no query or fragment")
    return problems


def client(settings: Settings, http_client: HttpClient | None = None) -> Client:
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        raise TwilioAdminError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must both be set")
    # requests waits forever by default; an operator's command should not.
    return Client(settings.twilio_account_sid, settings.twilio_auth_token,
                  http_client=http_client or TwilioHttpClient(timeout=REST_TIMEOUT_S))


def check_account(twilio: Client, account_sid: str) -> str:
    """The account's name and status; raises TwilioRestException when Twilio refuses the keys."""
    account = twilio.api.accounts(account_sid).fetch()
    return f"{account.friendly_name} ({account.status})"


def configure_number(twilio: Client, phone_number: str, public_url: str) -> Webhooks:
    """Points the number's voice webhook (POST) and status callback at this service."""
    hooks = webhooks(public_url)
    numbers = twilio.incoming_phone_numbers.list(phone_number=phone_number, limit=2)
    if not numbers:
        raise TwilioAdminError(f"{phone_number} is not a number of this Twilio account")
    if len(numbers) > 1:
        raise TwilioAdminError(f"{phone_number} matches several numbers; give it in full E.164 form")
    numbers[0].update(voice_url=hooks.voice, voice_method="POST",
                      status_callback=hooks.status, status_callback_method="POST")
    return hooks


def describe_rest_error(exc: TwilioRestException) -> str:
    return f"HTTP {exc.status}" + (f", code {exc.code}" if exc.code else "") + (f": {exc.msg}" if exc.msg else "")
