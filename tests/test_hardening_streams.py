"""Issue 18, the media streams: what a socket must do before it counts as a call, and what a
refused one may touch. Every test runs against the real app under uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
import websockets
from conftest import running_app
from helpers import simulated_call, stream_url, ulaw_silence, ulaw_tone

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.ops.records import read_records, record_path
from telephony.serve.security import AGENT_STREAM, OUTBOUND_ANSWER, TRANSCRIPTION_STREAM
from telephony.settings import Settings

API_KEY = "sk-test-secret-key-123"
AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
CALLS_TOKEN = "calls-api-token-0123456789"
PUBLIC = "https://bridge.example.com"


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False,
                    realtime_url=server.url, realtime_api_key=API_KEY, stream_secret="s" * 32,
                    calls_api_token=CALLS_TOKEN, **overrides)


def new_sid() -> str:
    return "CA" + uuid.uuid4().hex


def start_message(call_sid: str, parameters: dict[str, str]) -> str:
    return json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": call_sid, "accountSid": "AC1", "tracks": ["inbound"],
        "customParameters": parameters,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


async def close_code_after_start(url: str, call_sid: str, parameters: dict[str, str]) -> int:
    """Sends Twilio's connected and start; returns the close code the server answered with."""
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(start_message(call_sid, parameters))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 3.0)
    return ws.close_code


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


async def get(host: str, path: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://{host}{path}", **kwargs)


# --- 1. Sockets that never send a valid start ---


async def test_sockets_without_a_start_neither_count_as_calls_nor_outlive_the_deadline():
    async with ScriptedRealtimeServer() as server, running_app(settings_for(
            server, max_concurrent_calls=2, stream_start_timeout_seconds=0.6, max_pending_streams=3)) as (app, host):
        keepalive = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

        async def idler() -> tuple[int, float]:
            opened = time.monotonic()
            async with websockets.connect(stream_url(app, host, new_sid())) as ws:  # each its call's URL
                try:
                    while True:  # a keepalive every 100 ms does not extend the deadline
                        await ws.send(keepalive)
                        await asyncio.sleep(0.1)
                except websockets.ConnectionClosed:
                    pass
                await ws.wait_closed()
            return ws.close_code, time.monotonic() - opened

        idlers = [asyncio.create_task(idler()) for _ in range(3)]
        while app.state.gate.pending < 3:
            await asyncio.sleep(0.01)
        # The pending sockets are not calls: the webhook still says yes, /healthz counts none.
        async with httpx.AsyncClient() as client:
            voice = await client.post(f"http://{host}/twilio/voice", data={"CallSid": new_sid()})
        assert "<Connect>" in voice.text
        assert (await get(host, "/healthz")).json()["active_calls"] == 0
        # A fourth pending socket is over their own cap: refused at the handshake.
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(stream_url(app, host, new_sid())):
                pass
        results = await asyncio.gather(*idlers)
        # And a real call is served once they are gone.
        call = await simulated_call(app, host, caller_audio=ulaw_silence(0.3)).run()
        metrics = (await get(host, "/metrics")).text
    assert [code for code, _ in results] == [1008] * 3
    assert all(0.5 < took < 1.5 for _, took in results), results
    assert call.close_code in (None, 1000)
    assert metric(metrics, 'telephony_calls_total{outcome="refused"}') == 4
    assert metric(metrics, 'telephony_calls_total{outcome="abnormal"}') == 0


# --- 3. A refused start touches nothing of the call it names ---


async def test_a_refused_start_leaves_the_named_calls_feed_and_record_alone(tmp_path):
    sid = new_sid()
    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server, \
            running_app(settings_for(server, call_records_dir=tmp_path)) as (app, host):
        victim = simulated_call(app, host, call_sid=sid, caller_audio=ulaw_silence(2.0))
        running = asyncio.create_task(victim.run())
        while not app.state.transcripts.active(sid):
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as client, client.stream(
                "GET", f"http://{host}/calls/{sid}/transcript",
                headers={"Authorization": f"Bearer {CALLS_TOKEN}"}) as feed:
            assert feed.status_code == 200
            forged = {"call_sid": sid, "token": "v2.9999999999.forged"}
            assert await close_code_after_start(stream_url(app, host, sid), sid, forged) == 1008
            # The feed did not end: nothing arrives on it, and the call is still followed.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(feed.aiter_bytes().__anext__(), 0.3)
            assert app.state.transcripts.active(sid)  # a new GET would find it (404 before the fix)
        await running
    kinds = [r["kind"] for r in read_records(record_path(tmp_path, sid))]
    assert kinds.count("start") == 1 and "refused" not in kinds


# --- 4. A token opens one stream, on its own route only ---


async def test_a_token_opens_one_stream_and_a_call_has_one_stream_at_a_time():
    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server, \
            running_app(settings_for(server)) as (app, host):
        sid = new_sid()
        url = stream_url(app, host, sid)
        params = app.state.stream_tokens.with_token({"call_sid": sid}, time.time())
        first = TwilioCallSimulator(url, call_sid=sid, custom_parameters=params, caller_audio=ulaw_silence(1.5))
        running = asyncio.create_task(first.run())
        while not app.state.active_calls:
            await asyncio.sleep(0.01)
        replayed = await close_code_after_start(url, sid, params)
        # A fresh token for the same call (a second webhook) cannot open a second stream either.
        fresh = app.state.stream_tokens.with_token({"call_sid": sid, "from": "+15550001111"}, time.time())
        second = await close_code_after_start(url, sid, fresh)
        sessions_during = len(server.connections)
        result = await running
        # Over: the used token stays used; a new token for the call may stream again.
        replayed_after = await close_code_after_start(url, sid, params)
    assert (replayed, second, replayed_after) == (1008, 1008, 1008)
    assert sessions_during == 1
    assert result.close_code in (None, 1000)


@pytest.mark.parametrize("purpose, path", [(AGENT_STREAM, "/twilio/transcribe-stream"),
                                           (TRANSCRIPTION_STREAM, "/twilio/media-stream"),
                                           (OUTBOUND_ANSWER, "/twilio/media-stream")])
async def test_a_token_is_accepted_only_on_its_own_route(purpose, path, caplog):
    async with ScriptedRealtimeServer() as server, \
            running_app(settings_for(server, forward_to_number="+15550009999")) as (app, host):
        sid = new_sid()
        params = app.state.stream_tokens.with_token({"call_sid": sid}, time.time(), purpose)
        code = await close_code_after_start(stream_url(app, host, sid, path), sid, params)
    assert code == 1008
    assert server.connections == []
    assert f"token was issued for the {purpose} route" in caplog.text


async def test_a_stream_token_is_not_an_outbound_answer_token():
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        params = app.state.stream_tokens.with_token({"to": "+15550001111"}, time.time(), AGENT_STREAM)
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/twilio/outbound", params=params, data={"CallSid": new_sid()})
    assert r.status_code == 403 and "issued for the agent route" in r.text


# --- 5. The transcription stream: off unless forwarding is on, and under the same deadline ---


async def test_transcription_stream_is_refused_when_forwarding_is_off():
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(stream_url(app, host, new_sid(), "/twilio/transcribe-stream")):
                pass
    assert refused.value.response.status_code == 403


async def test_silent_transcription_streams_are_closed_at_the_start_deadline():
    async with ScriptedRealtimeServer() as server, running_app(settings_for(
            server, forward_to_number="+15550009999", stream_start_timeout_seconds=0.5)) as (app, host):
        started = time.monotonic()
        sockets = [await websockets.connect(stream_url(app, host, new_sid(), "/twilio/transcribe-stream"))
                   for _ in range(5)]
        for ws in sockets:
            await ws.wait_closed()
        took = time.monotonic() - started
    assert [ws.close_code for ws in sockets] == [1008] * 5
    assert took < 1.5
    assert server.connections == []


# --- 10. Digits that are not ASCII digits ---


async def test_a_mark_named_with_a_superscript_digit_is_dropped_and_the_call_goes_on(caplog):
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_tone(440, 1.0), extra_messages=[
            (0.2, json.dumps({"event": "mark", "streamSid": "MZx", "mark": {"name": "²"}}))])
        result = await sim.run()
    assert result.close_code in (None, 1000)
    assert "which we never sent; ignored" in caplog.text
    assert server.connections[0].of_type("input_audio_buffer.append")  # audio flowed after it


@pytest.mark.parametrize("token", ["v2.².x", "v2.١٢٣.x", "v1.².x"])
async def test_a_token_with_a_non_ascii_expiry_is_refused_with_1008(token):
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        sid = new_sid()
        code = await close_code_after_start(stream_url(app, host, sid), sid,
                                            {"call_sid": sid, "token": token})
    assert code == 1008


# --- 11. Call sids that are not Twilio's ---


@pytest.mark.parametrize("sid", [".", "..", "CA" + "1" * 31, "CA" + "G" * 32, "CA1\nforged"])
async def test_a_start_whose_call_sid_is_not_twilios_is_refused(sid, tmp_path):
    async with ScriptedRealtimeServer() as server, \
            running_app(settings_for(server, call_records_dir=tmp_path)) as (app, host):
        params = app.state.stream_tokens.with_token({"call_sid": sid}, time.time())  # even well signed
        # (A URL names a Twilio call sid only: this start comes on a valid URL, for another call.)
        code = await close_code_after_start(stream_url(app, host, new_sid()), sid, params)
    assert code == 1008
    assert list(tmp_path.iterdir()) == []
    assert server.connections == []
