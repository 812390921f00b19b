"""Signed webhooks and signed stream tokens, on a real uvicorn server."""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET

import httpx
import pytest
from conftest import running_app
from helpers import stream_from_twiml, stream_url, ulaw_silence
from twilio.request_validator import RequestValidator

from telephony.offline.scripted_realtime import ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.serve.security import StreamTokens, stream_key
from telephony.settings import Settings, SettingsError

API_KEY = "sk-test-secret-key-123"
AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
STREAM_SECRET = "stream-secret-fedcba9876543210"
PUBLIC = "https://bridge.example.com"
FORM = {"CallSid": "CA" + "1" * 32, "From": "+15551230000", "To": "+15559870000", "Direction": "inbound"}
PROXY = {"X-Forwarded-Proto": "https", "Host": "bridge.example.com"}


def secure_settings(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(realtime_url=server.url, realtime_api_key=API_KEY, twilio_auth_token=AUTH_TOKEN,
                    stream_secret=STREAM_SECRET, **overrides)


def sign(url: str, form: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, form)


def stream_parameters(twiml: str) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in ET.fromstring(twiml).iter("Parameter")}


async def post_voice(host: str, form=FORM, headers=None) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(f"http://{host}/twilio/voice", data=form, headers=headers or {})


# --- Tokens, without a server ---


def test_token_covers_every_parameter_and_the_call():
    tokens = StreamTokens(b"k" * 32, ttl_s=60)
    params = tokens.with_token({"call_sid": "CA1", "from": "+1555", "to": "+1666", "greeting": "Hi"}, 1000.0)
    assert tokens.verify(params, "CA1", 1010.0) is None
    assert "another call" in tokens.verify(params, "CA2", 1010.0)
    assert "expired" in tokens.verify(params, "CA1", 1061.0)
    for name in ("from", "to", "greeting", "call_sid"):
        assert "does not match" in tokens.verify({**params, name: "forged"}, "CA1", 1010.0)
    assert "does not match" in tokens.verify({**params, "extra": "injected"}, "CA1", 1010.0)
    assert "does not match" in StreamTokens(b"x" * 32).verify(params, "CA1", 1010.0)
    assert tokens.verify({"call_sid": "CA1"}, "CA1", 1010.0) == "no stream token"
    assert tokens.verify({**params, "token": "v1.abc.def"}, "CA1", 1010.0) == "malformed stream token"
    # An expiry pushed into the future breaks the signature rather than extending the token.
    version, expires, mac = params["token"].split(".")
    later = {**params, "token": f"{version}.{int(expires) + 3600}.{mac}"}
    assert "does not match" in tokens.verify(later, "CA1", 1061.0)
    assert "k" * 32 not in repr(tokens)


def test_empty_parameters_are_left_out_as_twiml_leaves_them_out():
    tokens = StreamTokens(b"k" * 32)
    params = tokens.with_token({"call_sid": "CA1", "from": "", "to": "+1666"}, 0.0)
    assert set(params) == {"call_sid", "to", "token"}
    assert tokens.verify(params, "CA1", 1.0) is None


def test_stream_key_sources(caplog):
    assert stream_key(Settings(stream_secret="s", twilio_auth_token="t")) == b"s"
    derived = stream_key(Settings(twilio_auth_token=AUTH_TOKEN))
    assert derived == stream_key(Settings(twilio_auth_token=AUTH_TOKEN)) and AUTH_TOKEN.encode() not in derived
    with caplog.at_level(logging.WARNING):
        a, b = stream_key(Settings()), stream_key(Settings())
    assert a != b and "STREAM_SECRET" in caplog.text


def test_security_settings_from_env():
    s = Settings.from_env({"TWILIO_AUTH_TOKEN": "t", "STREAM_SECRET": "x", "TWILIO_VALIDATE_SIGNATURES": "false"})
    assert s.twilio_auth_token == "t" and s.stream_secret == "x" and not s.twilio_validate_signatures
    assert "'t'" not in repr(s) and "'x'" not in repr(s)
    assert Settings.from_env({}).twilio_validate_signatures
    with pytest.raises(SettingsError, match="TWILIO_VALIDATE_SIGNATURES"):
        Settings.from_env({"TWILIO_VALIDATE_SIGNATURES": "maybe"})


# --- Webhook signatures on a real server ---


async def test_signed_webhook_behind_proxy_is_answered(caplog):
    async with ScriptedRealtimeServer() as server, running_app(secure_settings(server)) as (app, host):
        r = await post_voice(host, headers={**PROXY, "X-Twilio-Signature": sign(PUBLIC + "/twilio/voice", FORM)})
    assert r.status_code == 200 and "<Connect>" in r.text
    params = stream_parameters(r.text)
    assert params["call_sid"] == FORM["CallSid"] and params["from"] == FORM["From"] and params["token"]


async def test_public_url_setting_is_the_signed_url():
    async with ScriptedRealtimeServer() as server, \
            running_app(secure_settings(server, public_url="https://calls.example.org")) as (app, host):
        good = await post_voice(host, headers={
            "X-Twilio-Signature": sign("https://calls.example.org/twilio/voice", FORM)})
        wrong_host = await post_voice(host, headers={
            **PROXY, "X-Twilio-Signature": sign(PUBLIC + "/twilio/voice", FORM)})
    assert good.status_code == 200 and wrong_host.status_code == 403


@pytest.mark.parametrize("case", ["missing", "forged", "wrong_token", "http_not_https", "tampered_form"])
async def test_bad_webhook_signatures_are_refused(case, caplog):
    url = PUBLIC + "/twilio/voice"
    signature = {
        "missing": None,
        "forged": "bm90IGEgc2lnbmF0dXJl",
        "wrong_token": sign(url, FORM, token="some-other-token"),
        "http_not_https": sign("http://bridge.example.com/twilio/voice", FORM),
        "tampered_form": sign(url, {**FORM, "From": "+15550000000"}),
    }[case]
    headers = dict(PROXY)
    if signature:
        headers["X-Twilio-Signature"] = signature
    with caplog.at_level(logging.INFO):
        async with ScriptedRealtimeServer() as server, running_app(secure_settings(server)) as (app, host):
            r = await post_voice(host, headers=headers)
    assert r.status_code == 403 and "<Connect>" not in r.text
    assert "webhook /twilio/voice rejected" in caplog.text
    assert AUTH_TOKEN not in caplog.text and STREAM_SECRET not in caplog.text


async def test_validation_can_be_turned_off_for_local_development(caplog):
    with caplog.at_level(logging.WARNING):
        async with ScriptedRealtimeServer() as server, \
                running_app(secure_settings(server, twilio_validate_signatures=False)) as (app, host):
            r = await post_voice(host, headers=PROXY)
    assert r.status_code == 200
    assert "TWILIO_VALIDATE_SIGNATURES=false" in caplog.text


# --- Stream tokens on a real server ---


async def test_stream_with_token_from_the_twiml_is_served():
    async with ScriptedRealtimeServer() as server, running_app(secure_settings(server)) as (app, host):
        r = await post_voice(host, headers={**PROXY, "X-Twilio-Signature": sign(PUBLIC + "/twilio/voice", FORM)})
        url, parameters = stream_from_twiml(r.text, host)
        sim = TwilioCallSimulator(url, call_sid=FORM["CallSid"], custom_parameters=parameters,
                                  caller_audio=ulaw_silence(0.5))
        result = await sim.run()
    assert result.close_code in (None, 1000)  # we hung up first
    assert len(server.connections) == 1 and server.connections[0].of_type("input_audio_buffer.append")


def _tampered(params: dict[str, str], case: str) -> tuple[dict[str, str], str]:
    call_sid = params["call_sid"]
    if case == "missing":
        return {k: v for k, v in params.items() if k != "token"}, call_sid
    if case == "forged_from":
        return {**params, "from": "+15550000000"}, call_sid
    if case == "greeting_injected":
        return {**params, "greeting": "Read me your card number."}, call_sid
    if case == "other_call":
        return params, "CA" + "2" * 32
    if case == "garbage":
        return {**params, "token": "garbage"}, call_sid
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "forged_from", "greeting_injected", "other_call", "garbage",
                                  "expired"])
async def test_bad_stream_tokens_close_with_1008_before_any_upstream(case, caplog):
    async with ScriptedRealtimeServer() as server, running_app(secure_settings(server)) as (app, host):
        tokens: StreamTokens = app.state.stream_tokens
        issued = time.time() - tokens.ttl_s - 5 if case == "expired" else time.time()
        params = tokens.with_token({"call_sid": FORM["CallSid"], "from": FORM["From"]}, issued)
        params, call_sid = (params, FORM["CallSid"]) if case == "expired" else _tampered(params, case)
        started = time.monotonic()
        sim = TwilioCallSimulator(stream_url(app, host, call_sid), call_sid=call_sid,
                                  custom_parameters=params, caller_audio=ulaw_silence(2.0))
        result = await sim.run()
        elapsed = time.monotonic() - started
    assert result.close_code == 1008 and elapsed < 1.0
    assert server.connections == []  # no Realtime socket was ever opened
    assert f"call {call_sid}: stream refused" in caplog.text
    assert app.state.active_calls == set()


async def test_every_twilio_http_route_requires_a_signature():
    """A /twilio/* HTTP endpoint added later without the guard fails here."""
    from starlette.routing import Route

    async with ScriptedRealtimeServer() as server, running_app(secure_settings(server)) as (app, host):
        routes = [r for r in app.routes if isinstance(r, Route) and r.path.startswith("/twilio/")]
        assert routes
        async with httpx.AsyncClient() as client:
            for route in routes:
                for method in route.methods - {"HEAD"}:
                    r = await client.request(method, f"http://{host}{route.path}", data=FORM, headers=PROXY)
                    assert r.status_code == 403, (method, route.path)


def test_redacting_filter_scrubs_any_logger_through_the_handler():
    import io

    from telephony.serve.security import RedactingFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter([API_KEY, AUTH_TOKEN, ""]))
    logger = logging.getLogger("some.library")
    logger.addHandler(handler)
    try:
        logger.warning("header Authorization: Bearer %s, token %s", API_KEY, AUTH_TOKEN)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().strip() == "header Authorization: Bearer [redacted], token [redacted]"
