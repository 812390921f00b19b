"""Limits: concurrent calls, a stream that goes quiet, settings validation."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from conftest import running_app
from helpers import simulated_call, stream_url, ulaw_silence

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings, SettingsError

API_KEY = "sk-test-secret-key-123"
BUSY_SID = "CA" + "9" * 32  # call sids have Twilio's shape: the Twilio routes refuse any other
QUIET_SID = "CA" + "7" * 32


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key=API_KEY, **overrides)


async def voice(host: str) -> str:
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{host}/twilio/voice", data={"CallSid": BUSY_SID, "From": "+1555"})
    assert r.status_code == 200
    return r.text


async def test_calls_beyond_the_limit_are_rejected_busy(caplog):
    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server, \
            running_app(settings_for(server, max_concurrent_calls=1)) as (app, host):
        assert "<Connect>" in await voice(host)
        call = asyncio.create_task(simulated_call(app, host, caller_audio=ulaw_silence(1.0)).run())
        while not app.state.active_calls:
            await asyncio.sleep(0.01)
        busy = await voice(host)
        await call
        after = await voice(host)
    assert '<Reject reason="busy" />' in busy and "<Connect>" not in busy
    assert "<Connect>" in after
    assert f"call {BUSY_SID} rejected as busy: at the limit of 1 concurrent calls" in caplog.text


async def test_stream_that_goes_quiet_is_ended(caplog):
    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server, \
            running_app(settings_for(server, media_timeout_seconds=0.5)) as (app, host):
        params = app.state.stream_tokens.with_token({"call_sid": QUIET_SID}, time.time())
        async with websockets.connect(stream_url(app, host, QUIET_SID)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "streamSid": "MZq", "start": {
                "streamSid": "MZq", "callSid": QUIET_SID, "accountSid": "AC1", "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosedOK):
                while True:
                    await asyncio.wait_for(ws.recv(), 3.0)  # then nothing at all: no media, no stop
            quiet_for = time.monotonic() - started
        deadline = time.monotonic() + 1.0
        while not server.connections[0].closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert server.connections[0].closed  # the upstream went with it
    assert 0.5 <= quiet_for < 1.0
    assert f"call {QUIET_SID}: nothing from Twilio for" in caplog.text


def test_limit_settings_from_env():
    s = Settings.from_env({"MAX_CONCURRENT_CALLS": "3", "MAX_MESSAGE_BYTES": "1000",
                           "MEDIA_TIMEOUT_SECONDS": "2.5", "SHUTDOWN_GRACE_SECONDS": "0",
                           "STREAM_TOKEN_TTL_SECONDS": "30"})
    assert (s.max_concurrent_calls, s.max_message_bytes, s.media_timeout_seconds,
            s.shutdown_grace_seconds, s.stream_token_ttl_seconds) == (3, 1000, 2.5, 0.0, 30)
    d = Settings.from_env({})
    assert (d.max_concurrent_calls, d.max_message_bytes, d.media_timeout_seconds,
            d.shutdown_grace_seconds, d.stream_token_ttl_seconds) == (50, 65536, 10.0, 25.0, 60)
    for name, value in [("MAX_CONCURRENT_CALLS", "-1"), ("MAX_CONCURRENT_CALLS", "many"),
                        ("MAX_MESSAGE_BYTES", "0"), ("MEDIA_TIMEOUT_SECONDS", "soon"),
                        ("MEDIA_TIMEOUT_SECONDS", "0"), ("SHUTDOWN_GRACE_SECONDS", "-5"),
                        ("STREAM_TOKEN_TTL_SECONDS", "0")]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


async def test_a_place_held_for_a_starting_call_counts_until_given_back_or_filled():
    """OpenAI's SIP route holds a place while it awaits the accept; filling or giving it back twice
    must never free another call's place."""
    from telephony.serve.limits import CallRegistry

    registry = CallRegistry(max_calls=2)
    first, second = registry.reserve(), registry.reserve()
    assert first and second and registry.reserve() is None and "limit of 2" in registry.accepting()
    call = object()
    first.fill(call)
    first.release()  # after filling: nothing to give back
    assert registry.reserve() is None and len(registry) == 1
    second.release()
    second.release()
    third = registry.reserve()
    assert third is not None and registry.reserve() is None
    registry.discard(call)
    assert registry.reserve() is not None
