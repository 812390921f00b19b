"""Stream tokens and webhook signatures pinned where mutmut found the suite blind: the token's
exact wire form (instances of two releases must agree), the expiry boundary, signed URLs with a
query, Twilio's SHA-256 signatures, and the redacting logger."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging

import httpx
from conftest import serve_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from telephony.serve.security import RedactingLogger, StreamTokens, WebhookGuard, signed_url, stream_key
from telephony.settings import Settings

KEY = b"k" * 32
AUTH_TOKEN = "pinned-auth-token"
PUBLIC = "https://bridge.example.com"


def test_the_token_is_version_expiry_and_an_hmac_of_the_canonical_parameters():
    parameters = {"greeting": 'Grüß dich, "friend"', "call_sid": "CA1"}
    token = StreamTokens(KEY, 60).sign(parameters, 1000.7)
    # The signed payload names the stream's purpose (an agent stream by default): a token for one
    # route is refused on the others.
    canonical = json.dumps(["v2", "agent", 1060, [["call_sid", "CA1"], ["greeting", 'Grüß dich, "friend"']]],
                           separators=(",", ":"), ensure_ascii=False).encode()
    mac = base64.urlsafe_b64encode(hmac.new(KEY, canonical, hashlib.sha256).digest()).rstrip(b"=").decode()
    assert token == f"v2.1060.{mac}" and "=" not in token


def test_a_token_is_good_up_to_and_including_its_expiry_second():
    tokens = StreamTokens(KEY, 60)
    signed = tokens.with_token({"call_sid": "CA1"}, 1000.0)
    assert tokens.verify(signed, "CA1", 1060.0) is None
    assert tokens.verify(signed, "CA1", 1065.0) == "stream token expired 5 s ago"


def test_a_token_over_other_parameters_says_so():
    tokens = StreamTokens(KEY, 60)
    signed = tokens.with_token({"call_sid": "CA1", "voice": "coral"}, 0.0)
    assert tokens.verify({**signed, "voice": "ash"}, "CA1", 1.0) == \
        "stream token does not match the stream's parameters"


def test_a_token_for_another_call_says_so():
    tokens = StreamTokens(KEY, 60)
    assert tokens.verify(tokens.with_token({"call_sid": "CA1"}, 0.0), "CA2", 1.0) == \
        "stream token was issued for another call"


def test_the_stream_key_is_derived_from_the_auth_token_never_the_token_itself():
    derived = stream_key(Settings(twilio_auth_token=AUTH_TOKEN))
    assert derived == hmac.new(AUTH_TOKEN.encode(), b"telephony stream token v1", hashlib.sha256).digest()
    assert stream_key(Settings(twilio_validate_signatures=False, stream_secret="s3cret")) == b"s3cret"
    assert len(stream_key(Settings(twilio_validate_signatures=False))) == 32


def request_for(path: str, query: bytes) -> Request:
    return Request({"type": "http", "method": "POST", "path": path, "query_string": query, "headers": []})


def test_the_signed_url_is_the_public_base_path_and_query_as_sent():
    assert signed_url(request_for("/twilio/outbound", b"a=1&b=%C3%A9"), PUBLIC) == \
        f"{PUBLIC}/twilio/outbound?a=1&b=%C3%A9"
    assert signed_url(request_for("/twilio/voice", b""), PUBLIC) == f"{PUBLIC}/twilio/voice"


async def guarded_post(form: dict[str, str], headers: dict[str, str], path: str = "/hook?x=1"):
    async def hook(request: Request):
        return PlainTextResponse("ok")

    guard = WebhookGuard(Settings(twilio_auth_token=AUTH_TOKEN), lambda request: PUBLIC)
    async with serve_app(Starlette(routes=[Route("/hook", guard(hook), methods=["POST"])])) as host:
        async with httpx.AsyncClient() as client:
            return await client.post(f"http://{host}{path}", data=form, headers=headers)


async def test_twilios_sha256_signatures_are_checked_with_sha256():
    form = {"CallSid": "CA" + "1" * 32, "From": "+15550001111"}  # Twilio's shape, as the routes require
    validator = RequestValidator(AUTH_TOKEN)
    sha256 = validator.compute_signature(f"{PUBLIC}/hook?x=1", form, "HMAC_SHA256")
    settings = {"X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_SHA256"}
    ok = await guarded_post(form, {"X-Twilio-Signature": sha256, **settings})
    assert ok.status_code == 200 and ok.text == "ok"
    # The same signature claimed as the legacy SHA-1 one does not match.
    assert (await guarded_post(form, {"X-Twilio-Signature": sha256})).status_code == 403


async def test_a_refusal_is_a_bare_403_and_the_log_says_why(caplog):
    refused = await guarded_post({"CallSid": "CA" + "1" * 32}, {})
    assert (refused.status_code, refused.text) == (403, "Forbidden")
    assert "webhook /hook rejected (no X-Twilio-Signature)" in caplog.text


def test_unchecked_signatures_are_warned_about_only_when_turned_off(caplog):
    with caplog.at_level(logging.WARNING, "telephony.security"):
        WebhookGuard(Settings(twilio_auth_token=AUTH_TOKEN), lambda request: PUBLIC)
        assert "NOT checked" not in caplog.text
        WebhookGuard(Settings(twilio_validate_signatures=False), lambda request: PUBLIC)
    assert caplog.text.count("TWILIO_VALIDATE_SIGNATURES=false: webhook signatures are NOT checked") == 1


def test_the_redacting_logger_scrubs_secrets_and_keeps_level_and_exception(caplog):
    adapter = RedactingLogger(logging.getLogger("pinned.library"), ["sk-secret", ""])
    with caplog.at_level(logging.DEBUG, "pinned.library"):
        adapter.debug("GET with Authorization: Bearer %s (%d%%)", "sk-secret", 100)
        adapter.info("no arguments, 100%")
        try:
            raise ValueError("boom")
        except ValueError:
            adapter.error("failed for key sk-secret", exc_info=True)
    debug, info, error = caplog.records
    assert (debug.levelno, debug.getMessage()) == (logging.DEBUG, "GET with Authorization: Bearer [redacted] (100%)")
    assert (info.levelno, info.getMessage()) == (logging.INFO, "no arguments, 100%")
    assert error.getMessage() == "failed for key [redacted]" and error.exc_info[0] is ValueError
    assert "sk-secret" not in caplog.text
