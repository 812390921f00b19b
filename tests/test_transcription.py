"""Transcripts: agent calls and forked calls between people, delivered by webhook and SSE."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import running_app, serve_app
from helpers import simulated_call, ulaw_silence, ulaw_tone, validate_event, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings

TOKEN = "calls-token-for-feeds"


@dataclass
class WebhookReceiver:
    delay_s: float = 0.0
    fail_first: int = 0  # answer 500 to this many requests first
    received: list[dict] = field(default_factory=list)
    attempts: int = 0

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.attempts += 1
            await asyncio.sleep(self.delay_s)
            if self.attempts <= self.fail_first:
                return Response(status_code=500)
            self.received.append(await request.json())
            return Response(status_code=204)
        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def fork_audio():
    caller = ulaw_silence(0.3) + ulaw_tone(500, 0.7) + ulaw_silence(1.3) + ulaw_tone(700, 0.5) + ulaw_silence(0.8)
    callee = ulaw_silence(1.3) + ulaw_tone(1000, 0.7) + ulaw_silence(1.6)
    return caller, callee


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_forked_call_is_transcribed_per_speaker_in_order(dialect):
    receiver = WebhookReceiver()
    async with serve_app(receiver.app()) as hook_host, \
            ScriptedRealtimeServer(Script(silence_ms=300), dialect=dialect) as server:
        settings = Settings(twilio_validate_signatures=False,
                            realtime_url=server.url, realtime_api_key="k", realtime_dialect=dialect,
                            forward_to_number="+15554443333", calls_api_token=TOKEN,
                            transcript_webhook_url=f"http://{hook_host}/hook")
        async with running_app(settings) as (app, host):
            async with httpx.AsyncClient() as client:
                r = await client.post(f"http://{host}/twilio/transcribe-and-forward",
                                      data={"CallSid": "CA" + "1" * 32, "From": "+15551110000"},
                                      headers={"X-Forwarded-Proto": "https", "Host": "bridge.example.com"})
            assert '<Start><Stream track="both_tracks" url="wss://bridge.example.com/twilio/transcribe-stream/s1.' \
                in r.text and r.text.endswith("<Dial>+15554443333</Dial></Response>")
            caller, callee = fork_audio()
            sim = simulated_call(app, host, path="/twilio/transcribe-stream", caller_audio=caller,
                                 outbound_audio=callee)
            await sim.run()
            await app.state.transcripts.drain(5.0)
    assert len(server.connections) == 2
    for conn in server.connections:
        assert parse_qs(urlsplit(conn.path).query) == {"intent": ["transcription"]}
        first = conn.received[0]
        assert first["type"] == ("transcription_session.update" if dialect == "beta" else "session.update")
        for event in conn.received:
            validate_event(event, dialect, "client")
        for event in conn.sent:
            validate_event(event, dialect, "server")
    turns = [(t["speaker"], t["text"].split(" for ")[0]) for t in receiver.received]
    assert turns == [("caller", "a 500 Hz tone"), ("callee", "a 1000 Hz tone"), ("caller", "a 700 Hz tone")]
    assert [t["seq"] for t in receiver.received] == [1, 2, 3]
    assert all(t["call_sid"] == sim.call_sid for t in receiver.received)
    ats = [t["at"] for t in receiver.received]
    assert ats == sorted(ats) and 1.0 < ats[0] < 1.6


async def test_agent_call_transcript_keeps_only_what_the_caller_heard_and_reaches_a_slow_webhook():
    # A receiver that is slow and fails its first request: every turn still arrives once, in
    # order, and the call's audio path is not held up by it.
    receiver = WebhookReceiver(delay_s=0.4, fail_first=1)
    script = Script(response_ms=3000, speed=2.0, response_lengths={1: 800})
    caller = ulaw_silence(1.0) + ulaw_tone(500, 0.6) + ulaw_silence(2.4)
    async with serve_app(receiver.app()) as hook_host, ScriptedRealtimeServer(script) as server:
        settings = Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key="k",
                            transcript_webhook_url=f"http://{hook_host}/hook")
        async with running_app(settings) as (app, host):
            sim = simulated_call(app, host, caller_audio=caller)
            result = await sim.run()
            await app.state.transcripts.drain(10.0)
    assert 1.0 <= result.clears[0] <= 1.12  # barge-in as prompt as without a webhook (VAD + a frame)
    turns = receiver.received
    assert [t["speaker"] for t in turns] == ["agent", "caller", "agent"]
    assert [t["seq"] for t in turns] == [1, 2, 3] and receiver.attempts == 4  # one retry
    interrupted = turns[0]
    (truncate,) = server.connections[0].of_type("conversation.item.truncate")
    assert interrupted["interrupted"] is True and interrupted["heard_ms"] == truncate["audio_end_ms"]
    full = "Scripted response number 1, a tone of 440 hertz."
    assert full.startswith(interrupted["text"]) and 0 < len(interrupted["text"]) < len(full)
    assert turns[1]["text"].startswith("a 500 Hz tone")
    assert turns[2]["text"] == "Scripted response number 2, a tone of 660 hertz."


async def test_live_feed_streams_turns_while_the_call_is_in_progress():
    script = Script(response_ms=500, speed=5.0)
    caller = ulaw_silence(0.8) + ulaw_tone(500, 0.5) + ulaw_silence(2.5)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key="k",
                                 calls_api_token=TOKEN)) as (app, host):
        sim = simulated_call(app, host, caller_audio=caller)
        call = asyncio.create_task(sim.run())
        await wait_until(lambda: app.state.transcripts.active(sim.call_sid), "the call's stream to start")
        seen: list[tuple[float, dict]] = []
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"http://{host}/calls/{sim.call_sid}/transcript")
            assert r.status_code == 401
            r = await client.get(f"http://{host}/calls/CAnope/transcript",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 404
            async with client.stream("GET", f"http://{host}/calls/{sim.call_sid}/transcript",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as feed:
                assert feed.headers["content-type"].startswith("text/event-stream")
                event, events = None, []
                async for line in feed.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                        events.append(event)
                    elif line.startswith("data: ") and event == "transcript":
                        seen.append((time.monotonic(), json.loads(line[6:])))
        ended = time.monotonic()
        await call
    assert [t["speaker"] for _, t in seen] == ["agent", "caller", "agent"]
    assert events == ["transcript"] * 3 + ["end"]  # the feed says the call is over before closing
    assert seen[1][0] < ended - 1.0  # the caller's turn arrived live, not at the end
