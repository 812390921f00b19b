"""The real app under uvicorn, a simulated Twilio caller, and a scripted Realtime server."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import running_app
from helpers import (
    active_spans,
    dominant_freq,
    joined,
    simulated_call,
    ulaw_silence,
    ulaw_tone,
    validate_event,
)

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings

API_KEY = "sk-test-secret-key-123"


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key=API_KEY, **overrides)


async def test_voice_webhook_answers_twiml_with_stream_and_fallback(profile):
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/twilio/voice",
                                  data={"CallSid": "CA" + "12" * 16, "From": "+15551230000",
                                        "To": "+15559870000"},
                                  headers={"X-Forwarded-Proto": "https", "Host": "bridge.example.com"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    xml = r.text
    assert '<Stream url="wss://bridge.example.com/twilio/media-stream/s1.' in xml
    assert '<Parameter name="from" value="+15551230000" />' in xml
    assert xml.index("</Connect>") < xml.index("<Say>") and profile.fallback in xml


# The last case runs under plain ASGI (uvicorn's own protocol, no direct lane), as under any server.
@pytest.mark.parametrize("dialect,codec,ws", [("beta", "pcm16", None), ("beta", "g711_ulaw", None),
                                              ("ga", "pcm16", None), ("ga", "g711_ulaw", None),
                                              ("beta", "pcm16", "websockets-sansio")])
async def test_barge_in_end_to_end(profile, dialect, codec, ws):
    # Deltas at 1.2x real time: the greeting is still being generated when the caller's second of
    # speech (longer than min_interruption_ms) confirms the interruption.
    script = Script(response_ms=3000, speed=1.2)
    caller = ulaw_silence(1.0) + ulaw_tone(500, 1.0) + ulaw_silence(3.6)
    options = {"ws": ws} if ws else {}
    async with ScriptedRealtimeServer(script, dialect=dialect) as server, \
            running_app(settings_for(server, realtime_dialect=dialect, audio_codec=codec), **options) as (app, host):
        sim = simulated_call(app, host, caller_audio=caller, parameters={"from": "+15551230000"})
        result = await sim.run()
        # Teardown: the upstream socket closes within a second of Twilio's stop.
        deadline = time.monotonic() + 1.0
        while not server.connections[0].closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert server.connections[0].closed

    (conn,) = server.connections
    # Handshake: model in the query, the dialect's header, bearer key.
    assert parse_qs(urlsplit(conn.path).query)["model"] == ["opeai/AudioLLM/Voice2"]
    assert conn.headers.get("openai-beta") == ("realtime=v1" if dialect == "beta" else None)
    assert conn.headers["authorization"] == f"Bearer {API_KEY}"
    # Every client event is well formed by the openai package's own models of that dialect.
    for event in conn.received:
        validate_event(event, dialect, "client")
    for event in conn.sent:
        validate_event(event, dialect, "server")
    types = conn.received_types()
    assert types[0] == "session.update" and types[1] == "response.create"
    session = conn.received[0]["session"]
    if dialect == "ga":
        assert session["type"] == "realtime"
        assert session["audio"]["output"]["format"]["type"] == ("audio/pcmu" if codec == "g711_ulaw" else "audio/pcm")
    else:
        assert session["input_audio_format"] == session["output_audio_format"] == codec
    appends = conn.of_type("input_audio_buffer.append")
    assert len(appends) >= 200  # one per 20 ms frame
    bytes_per_frame = 160 if codec == "g711_ulaw" else 960
    assert {len(base64.b64decode(e["audio"])) for e in appends} == {bytes_per_frame}
    if codec == "g711_ulaw":  # passthrough: the caller's bytes reach the model untouched
        sent = b"".join(base64.b64decode(e["audio"]) for e in appends)
        assert sent[:len(result.caller)] == result.caller[:len(sent)]

    # The caller interrupted the greeting: one clear, one truncate of the greeting item.
    assert len(result.clears) == 1
    (truncate,) = conn.of_type("conversation.item.truncate")
    greeting_item = next(e["item_id"] for e in conn.sent if e["type"].endswith("audio.delta"))
    assert truncate["item_id"] == greeting_item
    clear = next(e for e in result.timeline if e.kind == "clear")
    heard_by_caller = clear.detail["played_ms"]
    assert abs(truncate["audio_end_ms"] - heard_by_caller) <= 20, (truncate, heard_by_caller)
    assert conn.of_type("response.cancel")
    assert result.marks_echoed_by_clear  # pending marks came back and were not counted

    # Heard audio: the greeting's 440 Hz until the barge-in, then the reply's 660 Hz.
    spans = joined(active_spans(result.agent))
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
    settings = Settings(twilio_validate_signatures=False,
                        realtime_url=url, realtime_api_key=API_KEY)  # nothing listens there now
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


async def test_barge_in_end_to_end_with_the_local_engine(profile):
    """The same call against ``REALTIME_URL=local``: the app's own wiring, no socket upstream."""
    settings = Settings.from_env({"REALTIME_URL": "local", "TWILIO_VALIDATE_SIGNATURES": "false"})
    # A second of tone: longer than min_interruption_ms, so the length alone confirms the
    # interruption, whatever the offline recogniser makes of a tone.
    caller = ulaw_silence(1.0) + ulaw_tone(500, 1.0) + ulaw_silence(5.0)
    async with running_app(settings) as (app, host):
        sim = simulated_call(app, host, caller_audio=caller, hang_up_when_quiet_s=0.5)
        result = await sim.run()
    assert len(result.clears) == 1 and result.marks_echoed_by_clear
    spans = active_spans(result.agent)
    # The greeting played from the start and stopped soon after the caller spoke at 1.0 s…
    assert spans[0][0] < 0.3
    greeting_end = max(end for start, end in spans if start < 1.0)
    assert 1.0 <= greeting_end <= 1.0 + 0.15
    # …and the answer came after the caller's turn ended (1.0 s of tone + 0.5 s of silence).
    answer = [s for s in spans if s[0] > 2.0]
    assert answer and 2.5 <= answer[0][0] <= 2.5 + 0.3
    assert answer[-1][1] - answer[0][0] > 1.0  # a spoken sentence, played to the end


async def test_local_engine_events_seen_by_the_bridge_are_valid_and_truncate_matches(profile):
    from telephony.offline.local_realtime import local_connector

    seen: list[tuple[str, dict]] = []
    caller = ulaw_silence(1.2) + ulaw_tone(500, 1.0) + ulaw_silence(1.0)  # longer than min_interruption_ms
    settings = Settings(twilio_validate_signatures=False, realtime_url="local")
    factory = lambda s: local_connector(observer=lambda d, e: seen.append((d, e)), greeting=profile.greeting)  # noqa: E731
    async with running_app(settings, connector_factory=factory) as (app, host):
        result = await simulated_call(app, host, caller_audio=caller).run()
    for direction, event in seen:
        validate_event(event, "beta", direction)
    (truncate,) = [e for d, e in seen if d == "client" and e["type"] == "conversation.item.truncate"]
    clear = next(e for e in result.timeline if e.kind == "clear")
    assert abs(truncate["audio_end_ms"] - clear.detail["played_ms"]) <= 20
    (truncated,) = [e for d, e in seen if d == "server" and e["type"] == "conversation.item.truncated"]
    assert truncated["audio_end_ms"] == truncate["audio_end_ms"]  # accepted: within the item's audio
