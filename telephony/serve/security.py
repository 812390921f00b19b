"""Who may talk to us: Twilio's webhook signatures, and signed tokens for the media stream.

A webhook is trusted when its ``X-Twilio-Signature`` matches the public URL Twilio called
(``twilio.request_validator.RequestValidator``). The media stream carries no such signature,
so the TwiML we answer hands it one: every ``<Parameter>`` of the stream (call sid, from, to,
any per-call override) plus an expiry, HMAC-SHA256 signed. The state travels with the call,
so any instance holding the key can verify it, with no shared store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from twilio.request_validator import RequestValidator, get_signature_algorithm

from telephony.settings import Settings

log = logging.getLogger("telephony.security")

TOKEN_PARAMETER = "token"
_TOKEN_VERSION = "v2"  # v2: the purpose is signed too
_DERIVATION_LABEL = b"telephony stream token v1"
_DECIMAL = re.compile(r"[0-9]{1,12}")  # str.isdigit() also takes '²', which int() refuses

# What a token is for: each route accepts only its own.
AGENT_STREAM = "agent"
TRANSCRIPTION_STREAM = "transcription"
OUTBOUND_ANSWER = "outbound"
PURPOSES = frozenset({AGENT_STREAM, TRANSCRIPTION_STREAM, OUTBOUND_ANSWER})

# Twilio's webhooks are a few KB of url-encoded form: anything far larger is refused unread.
WEBHOOK_BODY_LIMIT = 64 * 1024
_CALL_SID = re.compile(r"CA[0-9a-f]{32}")


def valid_call_sid(sid: object) -> bool:
    """Twilio's shape for a call sid; anything else never names a file, feed or claim."""
    return isinstance(sid, str) and _CALL_SID.fullmatch(sid) is not None

Endpoint = Callable[[Request], Awaitable[Response]]


# --- Webhook signatures ---


def signed_url(request: Request, public_base: str) -> str:
    """The URL as Twilio saw it (and signed it): public base, path, and query as sent."""
    query = request.url.query
    return public_base + request.url.path + (f"?{query}" if query else "")


class WebhookGuard:
    """Wraps the /twilio/* HTTP endpoints: a missing or forged signature gets a 403."""

    def __init__(self, settings: Settings, public_base: Callable[[Request], str]) -> None:
        self.enabled = bool(settings.twilio_auth_token) and settings.twilio_validate_signatures
        self._validator = RequestValidator(settings.twilio_auth_token) if self.enabled else None
        self._public_base = public_base
        if not settings.twilio_validate_signatures:  # create_app refuses the other unprotected case
            log.warning("TWILIO_VALIDATE_SIGNATURES=false: webhook signatures are NOT checked: anyone who "
                        "finds this service can place calls on its model key (for local development only)")

    def __call__(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            refusal = await _webhook_body_refusal(request)
            if refusal is not None:
                log.warning("webhook %s refused (%d): %s", request.url.path, refusal.status_code,
                            refusal.body.decode())
                return refusal
            if self._validator is not None:
                reason = await self._check(request)
                if reason:
                    log.warning("webhook %s rejected (%s) from %s", request.url.path, reason,
                                request.client.host if request.client else "?")
                    return PlainTextResponse("Forbidden", status_code=403)
            return await endpoint(request)
        return guarded

    async def _check(self, request: Request) -> str | None:
        signature = request.headers.get("x-twilio-signature")
        if not signature:
            return "no X-Twilio-Signature"
        # Starlette caches the form: the endpoint reads it again for free. FormData has getlist,
        # so the validator signs repeated fields as Twilio does.
        params = await request.form() if request.method == "POST" else {}
        url = signed_url(request, self._public_base(request))
        algorithm = get_signature_algorithm(request.headers.get("x-twilio-webhooks-signature-settings"))
        assert self._validator is not None
        if not self._validator.validate(url, params, signature, algorithm):
            return f"signature does not match {url}"
        return None


async def _webhook_body_refusal(request: Request) -> Response | None:
    """None when the body is a small url-encoded form (what Twilio sends); else the 4xx to answer.

    An oversized body is never buffered (``read_capped_body``); a multipart body (file parts)
    never reaches the validator, which cannot sign files."""
    if request.method != "POST":
        return None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("", "application/x-www-form-urlencoded"):
        return PlainTextResponse("webhooks are application/x-www-form-urlencoded", status_code=400)
    body = await read_capped_body(request, WEBHOOK_BODY_LIMIT)
    if isinstance(body, Response):
        return body
    form = await request.form()
    if any(isinstance(value, UploadFile) for _, value in form.multi_items()):
        return PlainTextResponse("webhooks carry no files", status_code=400)
    sid = form.get("CallSid")
    if sid is not None and not valid_call_sid(sid):
        return PlainTextResponse("CallSid is not a Twilio call sid (CA + 32 hex)", status_code=400)
    return None


async def read_capped_body(request: Request, limit: int) -> bytes | Response:
    """The request's body, or the 4xx to answer when it is over ``limit`` bytes.

    The size is checked before the body is read (Content-Length) and while it is read (chunked),
    so an oversized body from anyone on the internet is never buffered."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isascii() or not declared.isdigit()):
        return PlainTextResponse("bad Content-Length", status_code=400)
    if declared is not None and int(declared) > limit:
        return _too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _too_large(limit)
    except ClientDisconnect:
        return PlainTextResponse("client went away", status_code=400)
    request._body = bytes(body)  # Starlette's own cache: body() and form() use these bytes, read once
    return request._body


def _too_large(limit: int) -> Response:
    # The rest of the body is never read: the connection closes after the answer.
    return PlainTextResponse(f"body over {limit} bytes", status_code=413, headers={"Connection": "close"})


# --- Stream tokens ---


def stream_key(settings: Settings) -> bytes:
    """STREAM_SECRET, else derived from the auth token, else random for this process only."""
    if settings.stream_secret:
        return settings.stream_secret.encode()
    if settings.twilio_auth_token:
        # Derived, not the token itself: a stream key never doubles as the webhook key.
        return hmac.new(settings.twilio_auth_token.encode(), _DERIVATION_LABEL, hashlib.sha256).digest()
    log.warning("neither STREAM_SECRET nor TWILIO_AUTH_TOKEN is set: stream tokens use a random "
                "per-process key, so with more than one instance set STREAM_SECRET")
    return secrets.token_bytes(32)


def _canonical(parameters: Mapping[str, str], purpose: str, expires: int) -> bytes:
    body = {k: v for k, v in parameters.items() if k != TOKEN_PARAMETER}
    return json.dumps([_TOKEN_VERSION, purpose, expires, sorted(body.items())], separators=(",", ":"),
                      ensure_ascii=False).encode()


@dataclass(frozen=True)
class VerifiedToken:
    """A token that checked out: what a claim needs (its MAC names it; it is void after ``expires``)."""

    mac: str
    expires: int


@dataclass(frozen=True)
class StreamTokens:
    """Signs a stream's parameters in the TwiML; verifies them when the stream starts."""

    key: bytes
    ttl_s: int = 60

    def __repr__(self) -> str:
        return f"StreamTokens(ttl_s={self.ttl_s})"  # never the key

    def _mac(self, parameters: Mapping[str, str], purpose: str, expires: int) -> str:
        digest = hmac.new(self.key, _canonical(parameters, purpose, expires), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _signed(self, parameters: Mapping[str, str], purpose: str, expires: int, mac: str) -> bool:
        expected = self._mac(parameters, purpose, expires).encode()
        return hmac.compare_digest(mac.encode("utf-8", "surrogatepass"), expected)

    def sign(self, parameters: Mapping[str, str], now: float, purpose: str = AGENT_STREAM) -> str:
        """The token for exactly these parameters (which must all go into the TwiML), good for
        ``purpose`` only."""
        assert purpose in PURPOSES, purpose
        expires = int(now) + self.ttl_s
        return f"{_TOKEN_VERSION}.{expires}.{self._mac(parameters, purpose, expires)}"

    def with_token(self, parameters: Mapping[str, str], now: float,
                   purpose: str = AGENT_STREAM) -> dict[str, str]:
        """The stream's parameters, empty ones left out (TwiML omits them), plus the token."""
        kept = {k: v for k, v in parameters.items() if v}
        return {**kept, TOKEN_PARAMETER: self.sign(kept, now, purpose)}

    def verify(self, parameters: Mapping[str, str], call_sid: str | None, now: float,
               purpose: str = AGENT_STREAM) -> str | None:
        """None when the parameters are the ones we signed for ``purpose`` (and for this call,
        when ``call_sid`` is given); else why not."""
        checked = self.check(parameters, call_sid, now, purpose)
        return checked if isinstance(checked, str) else None

    def check(self, parameters: Mapping[str, str], call_sid: str | None, now: float,
              purpose: str = AGENT_STREAM) -> VerifiedToken | str:
        """The verified token, or why it is refused."""
        token = parameters.get(TOKEN_PARAMETER)
        if not token:
            return "no stream token"
        version, _, rest = token.partition(".")
        expires_text, _, mac = rest.partition(".")
        if version != _TOKEN_VERSION or not _DECIMAL.fullmatch(expires_text) or not mac:
            return "malformed stream token"
        expires = int(expires_text)
        if not self._signed(parameters, purpose, expires, mac):
            # (The purpose is signed, not spelt out: the other purposes are tried only to say why.)
            for other in sorted(PURPOSES - {purpose}):
                if self._signed(parameters, other, expires, mac):
                    return f"token was issued for the {other} route, not the {purpose} one"
            return "stream token does not match the stream's parameters"
        if now > expires:
            return f"stream token expired {now - expires:.0f} s ago"
        if call_sid is not None and parameters.get("call_sid") != call_sid:
            return "stream token was issued for another call"
        return VerifiedToken(mac, expires)





# --- Keeping secrets out of logs ---

REDACTED = "[redacted]"


def redact(text: str, secrets_: list[str]) -> str:
    for secret in secrets_:
        text = text.replace(secret, REDACTED)
    return text


class RedactingLogger(logging.LoggerAdapter):
    """A logger for libraries that log what they send: websockets logs every handshake header
    at DEBUG, the ``Authorization: Bearer`` one included."""

    def __init__(self, logger: logging.Logger, secrets_: list[str]) -> None:
        super().__init__(logger, {})
        self._secrets = [s for s in secrets_ if s]

    def log(self, level: int, msg: object, *args: object, **kwargs) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self.logger.log(level, "%s", redact(text, self._secrets), **kwargs)


class RedactingFilter(logging.Filter):
    """For the process's log handlers: a last line of defence, whatever logger a secret took."""

    def __init__(self, secrets_: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets_ if s]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = redact(text, self._secrets)
        if clean != text:
            record.msg, record.args = clean, None
        return True
