"""The real app under uvicorn, a simulated Twilio caller, and a scripted Realtime server."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from telephony.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings

from conftest import running_app
from helpers import active_spans, dominant_freq, simulated_call, ulaw_silence, ulaw_tone, validate_event

API_KEY = "sk-test-secret-key-123"


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(realtime_url=server.url, realtime_api_key=API_KEY, **overrides)


async def test_voice_webhook_answers_twiml_with_stream_and_fallback(profile):
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/twilio/voice",
                                  data={"CallSid": "CA123", "From": "+15551230000", "To": "+15559870000"},
                                  headers={"X-Forwarded-Proto": "https", "Host": "bridge.example.com"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    xml = r.text
    assert '<Stream url="wss://bridge.example.com/twilio/media-stream">' in xml
    assert '<Parameter name="from" value="+15551230000" />' in xml
    assert xml.index("</Connect>") < xml.index("<Say>") and profile.fallback in xml


async def test_barge_in_end_to_end(profile):
    # Deltas at 2x real time: the greeting is still being generated when the caller speaks.
    script = Script(response_ms=3000, speed=2.0)
    caller = ulaw_silence(1.0) + ulaw_tone(500, 0.6) + ulaw_silence(2.6)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=caller, parameters={"from": "+15551230000"})
        result = await sim.run()
        # Teardown: the upstream socket closes within a second of Twilio's stop.
        deadline = time.monotonic() + 1.0
        while not server.connections[0].closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert server.connections[0].closed

    (conn,) = server.connections
    # Handshake: model in the query, beta header, bearer key.
    assert parse_qs(urlsplit(conn.path).query)["model"] == ["opeai/AudioLLM/Voice2"]
    assert conn.headers["openai-beta"] == "realtime=v1"
    assert conn.headers["authorization"] == f"Bearer {API_KEY}"
    # Every client event is well formed by the openai package's own models.
    for event in conn.received:
        validate_event(event, "beta", "client")
    for event in conn.sent:
        validate_event(event, "beta", "server")
    types = conn.received_types()
    assert types[0] == "session.update" and types[1] == "response.create"
    assert types.count("input_audio_buffer.append") >= 200  # one per 20 ms frame

    # The caller interrupted the greeting: one clear, one truncate of the greeting item.
    assert len(result.clears) == 1
    (truncate,) = conn.of_type("conversation.item.truncate")
    greeting_item = next(e["item_id"] for e in conn.sent if e["type"] == "response.audio.delta")
    assert truncate["item_id"] == greeting_item
    clear = next(e for e in result.timeline if e.kind == "clear")
    heard_by_caller = clear.detail["played_ms"]
    assert abs(truncate["audio_end_ms"] - heard_by_caller) <= 20, (truncate, heard_by_caller)
    assert conn.of_type("response.cancel")
    assert result.marks_echoed_by_clear  # pending marks came back and were not counted

    # Heard audio: the greeting's 440 Hz until the barge-in, then the reply's 660 Hz.
    spans = active_spans(result.agent)
    assert len(spans) == 2, spans
    (g_start, g_end), (r_start, r_end) = spans
    assert dominant_freq(result.agent[int(g_start * 8000):int(g_end * 8000)]) == pytest.approx(440, abs=5)
    assert dominant_freq(result.agent[int(r_start * 8000):int(r_end * 8000)]) == pytest.approx(660, abs=5)
    # The greeting stopped soon after the caller started speaking at 1.0 s (VAD + one frame).
    assert 1.0 <= g_end <= 1.0 + 0.12
    assert r_end - r_start == pytest.approx(3.0, abs=0.05)  # the second response played in full
    # Nothing of the interrupted response leaked after the clear.
    assert not any(440 - 5 < dominant_freq(result.agent[int(t * 8000):int(t * 8000) + 800]) < 440 + 5
                   for t in (r_start, r_start + 1.0, r_start + 2.0))


async def test_calls_in_one_process_are_independent(profile):
    script = Script(response_ms=2000, speed=5.0)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        sims = [simulated_call(app, host,
                                    caller_audio=ulaw_silence(0.3 + 0.3 * i) + ulaw_tone(500, 0.5)
                                    + ulaw_silence(1.6 - 0.3 * i)) for i in range(3)]
        results = await asyncio.gather(*(s.run() for s in sims))
    assert len(server.connections) == 3
    for i, result in enumerate(results):
        assert len(result.clears) == 1
        clear_at = result.clears[0]
        assert 0.3 + 0.3 * i <= clear_at <= 0.3 + 0.3 * i + 0.15  # each at its own caller's words
    assert app.state.active_calls == set()


async def test_realtime_refusing_connection_ends_stream_promptly(profile):
    async with ScriptedRealtimeServer() as server:
        url = server.url
    settings = Settings(realtime_url=url, realtime_api_key=API_KEY)  # nothing listens there now
    async with running_app(settings) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(5.0), hang_up=False)
        started = time.monotonic()
        result = await sim.run()
        assert time.monotonic() - started < 2.0  # the bridge closed the stream, so Twilio's fallback speaks
    assert result.agent.count(b"\xff") == len(result.agent)


async def test_healthz():
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://{host}/healthz")
    assert r.json() == {"status": "ok", "active_calls": 0}
    assert API_KEY not in r.text
