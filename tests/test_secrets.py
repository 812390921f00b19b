"""Keys and tokens never reach logs, errors or health output, whatever happens on a call."""

from __future__ import annotations

import asyncio
import logging

import httpx
from conftest import running_app
from helpers import simulated_call, ulaw_silence, ulaw_tone
from twilio.request_validator import RequestValidator

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings

API_KEY = "sk-live-SECRET-api-key-4242"
AUTH_TOKEN = "SECRET-twilio-auth-token-77"
STREAM_SECRET = "SECRET-stream-key-99"
FORM = {"CallSid": "CA" + "5" * 32, "From": "+15551230000", "To": "+15559870000"}


def settings_for(url: str) -> Settings:
    return Settings(realtime_url=url, realtime_api_key=API_KEY, twilio_auth_token=AUTH_TOKEN,
                    stream_secret=STREAM_SECRET)


async def a_day_of_calls(url: str, script_error: bool = False) -> list[str]:
    """Webhooks (good and forged), a good call, a refused stream; returns the HTTP bodies."""
    bodies = []
    async with running_app(settings_for(url)) as (app, host):
        base = "https://bridge.example.com"
        sig = RequestValidator(AUTH_TOKEN).compute_signature(base + "/twilio/voice", FORM)
        async with httpx.AsyncClient() as client:
            for headers in ({"X-Twilio-Signature": sig}, {"X-Twilio-Signature": "forged"}, {}):
                r = await client.post(f"http://{host}/twilio/voice", data=FORM,
                                      headers={"X-Forwarded-Proto": "https", "Host": "bridge.example.com",
                                               **headers})
                bodies.append(r.text)
            good = simulated_call(app, host, caller_audio=ulaw_silence(0.3) + ulaw_tone(500, 0.5)
                                  + ulaw_silence(0.6))
            refused = simulated_call(app, host, caller_audio=ulaw_silence(0.5))
            refused.custom_parameters = {**refused.custom_parameters, "from": "+1forged"}
            await asyncio.gather(good.run(), refused.run())
            bodies.append((await client.get(f"http://{host}/healthz")).text)
    return bodies


def assert_no_secrets(text: str) -> None:
    for secret in (API_KEY, AUTH_TOKEN, STREAM_SECRET):
        assert secret not in text


async def test_no_secret_in_logs_of_calls_that_work_and_fail(caplog):
    caplog.set_level(logging.DEBUG)  # everything, including the libraries' debug logs
    async with ScriptedRealtimeServer(Script(response_ms=600)) as server:
        bodies = await a_day_of_calls(server.url)
    async with ScriptedRealtimeServer(Script(reject_status=401)) as server:  # key refused upstream
        bodies += await a_day_of_calls(server.url)
    async with ScriptedRealtimeServer(Script(drop_after=30, drop_connections=2)) as server:
        bodies += await a_day_of_calls(server.url)
    assert server.connections[0].headers["authorization"] == f"Bearer {API_KEY}"  # it was used
    assert "stream refused" in caplog.text and "rejected" in caplog.text
    assert "cannot connect to Realtime" in caplog.text and "reconnecting" in caplog.text
    ours = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records
                     if r.name != "websockets.server")  # the fake provider may log what it got
    assert "telephony.realtime_client: WS connection established" in ours  # picows logs through ours
    assert_no_secrets(ours)
    for body in bodies:
        assert_no_secrets(body)
    assert_no_secrets(repr(settings_for("ws://x")))
