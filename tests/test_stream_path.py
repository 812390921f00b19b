"""Issue 22 item 2: a media stream's URL carries a per-call signed path segment, checked at the
handshake, so sockets without one are refused before they hold a pending slot and no number of
them can keep a real caller out. Every test runs the real app under uvicorn on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import httpx
import pytest
import websockets
from conftest import running_app
from helpers import stream_from_twiml, twilio_post, ulaw_silence, wait_until

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.settings import Settings

API_KEY = "sk-test-secret-key-123"
AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
FORWARD_TO = "+15550009999"
MAX_PENDING = 2
ATTACKERS = 3 * MAX_PENDING


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(realtime_url=server.url, realtime_api_key=API_KEY, twilio_auth_token=AUTH_TOKEN,
                    stream_secret="s" * 32, max_pending_streams=MAX_PENDING, forward_to_number=FORWARD_TO,
                    stream_start_timeout_seconds=5.0, **overrides)


def new_sid() -> str:
    return "CA" + uuid.uuid4().hex


async def answered(host: str, webhook: str, sid: str) -> tuple[str, dict[str, str]]:
    """What Twilio does first: POST the (signed) webhook, read the stream URL from the TwiML."""
    r = await twilio_post(host, webhook, {"CallSid": sid, "From": "+15551110000", "To": "+15552220000"},
                          auth_token=AUTH_TOKEN, public_base=f"http://{host}")
    assert r.status_code == 200, r.text
    return stream_from_twiml(r.text)


async def metrics(host: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://{host}/metrics")).text


def refused(text: str, route: str, reason: str) -> float:
    prefix = f'telephony_streams_refused_total{{reason="{reason}",route="{route}"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def calls_refused(text: str) -> float:
    prefix = 'telephony_calls_total{outcome="refused"}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def handshake_status(url: str) -> int:
    """101 when the server accepted the websocket, else the HTTP status it refused it with."""
    try:
        async with websockets.connect(url, open_timeout=5):
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


class Attacker:
    """Keeps a socket open on ``url`` without ever sending a verified start, and reopens it each
    time it is closed or refused: the busy-signal attack on the pending pool."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted = 0
        self.refused = 0

    async def run(self) -> None:
        keepalive = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        while True:
            try:
                async with websockets.connect(self.url, open_timeout=5) as ws:
                    self.accepted += 1
                    with contextlib.suppress(websockets.ConnectionClosed):
                        while True:
                            await ws.send(keepalive)
                            await asyncio.sleep(0.05)
            except websockets.InvalidStatus:
                self.refused += 1
                await asyncio.sleep(0.005)  # reopen at once, as an attacker would
            except (OSError, websockets.ConnectionClosed, TimeoutError):
                await asyncio.sleep(0.005)


ROUTES = [("agent", "/twilio/voice", "/twilio/media-stream"),
          ("transcription", "/twilio/transcribe-and-forward", "/twilio/transcribe-stream")]


@pytest.mark.parametrize("route, webhook, stream_path", ROUTES)
async def test_unsigned_sockets_never_hold_the_pool_and_a_real_caller_is_admitted(route, webhook, stream_path):
    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server, \
            running_app(settings_for(server)) as (app, host):
        bare = f"ws://{host}{stream_path}"
        attackers = [Attacker(bare if i % 2 else f"{bare}/not-a-signed-segment") for i in range(ATTACKERS)]
        tasks = [asyncio.create_task(a.run()) for a in attackers]
        try:
            def tries() -> int:
                return sum(a.accepted + a.refused for a in attackers)

            await wait_until(lambda: all(a.accepted + a.refused for a in attackers) and tries() >= 3 * ATTACKERS,
                             "every attacker to have tried, and to be retrying")
            tries_before = tries()
            pending_under_attack = app.state.gate.pending
            sid = new_sid()
            url, parameters = await answered(host, webhook, sid)
            both_tracks = {"outbound_audio": ulaw_silence(0.6)} if route == "transcription" else {}
            caller = TwilioCallSimulator(url, call_sid=sid, custom_parameters=parameters,
                                         caller_audio=ulaw_silence(0.6), **both_tracks)
            result = await caller.run()  # the attackers keep reconnecting all along
            sessions = len(server.connections)
            tries_during = tries() - tries_before
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        text = await metrics(host)
    assert pending_under_attack == 0
    assert [a.accepted for a in attackers] == [0] * ATTACKERS
    assert result.close_code in (None, 1000)
    assert sessions >= 1  # the real caller reached the model
    assert tries_during > ATTACKERS  # they kept at it while the caller was served
    assert refused(text, route, "missing_path") >= ATTACKERS // 2
    assert refused(text, route, "bad_path") >= ATTACKERS // 2
    assert calls_refused(text) == 0  # not calls: they never had a valid URL


def tamper(url: str) -> str:
    """The same URL with the last character of its MAC changed."""
    return url[:-1] + ("A" if url[-1] != "A" else "B")


async def test_forged_expired_and_other_route_segments_are_refused_at_the_handshake():
    from telephony.serve.security import AGENT_STREAM, TRANSCRIPTION_STREAM
    from telephony.serve.stream_paths import signed_stream_url

    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        tokens, sid = app.state.stream_tokens, new_sid()
        agent, fork = f"ws://{host}/twilio/media-stream", f"ws://{host}/twilio/transcribe-stream"
        good, _ = await answered(host, "/twilio/voice", sid)
        long_ago = time.time() - tokens.ttl_s - 5
        statuses = {
            "forged": await handshake_status(tamper(good)),
            "expired": await handshake_status(signed_stream_url(agent, tokens, AGENT_STREAM, sid, long_ago)),
            "transcription segment on the agent route": await handshake_status(
                signed_stream_url(agent, tokens, TRANSCRIPTION_STREAM, sid, time.time())),
            "agent segment on the transcription route": await handshake_status(
                signed_stream_url(fork, tokens, AGENT_STREAM, sid, time.time())),
            "another call's sid in a signed segment": await handshake_status(
                good.replace(sid, new_sid())),
            "bare": await handshake_status(agent),
            "nested": await handshake_status(f"{good}/more"),
        }
        text = await metrics(host)
        pending = app.state.gate.pending
    assert statuses == dict.fromkeys(statuses, 403)
    assert pending == 0 and server.connections == []
    assert refused(text, "agent", "bad_path") == 3  # forged, another call's sid, nested
    assert refused(text, "agent", "expired_path") == 1
    assert refused(text, "agent", "wrong_route_path") == 1
    assert refused(text, "transcription", "wrong_route_path") == 1
    assert refused(text, "agent", "missing_path") == 1


async def test_a_url_issued_for_one_call_cannot_start_another():
    """The segment names its call: a start for any other call (even one with a valid token) is refused."""
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        first, second = new_sid(), new_sid()
        url, _ = await answered(host, "/twilio/voice", first)
        _, other_parameters = await answered(host, "/twilio/voice", second)
        result = await TwilioCallSimulator(url, call_sid=second, custom_parameters=other_parameters,
                                           caller_audio=ulaw_silence(0.3)).run()
        text = await metrics(host)
    assert result.close_code == 1008
    assert server.connections == []
    assert refused(text, "agent", "bad_start") == 1


async def test_one_url_holds_at_most_one_pending_slot():
    """A URL that leaked (or TwiML fetched without signatures) cannot fill the pool on its own."""
    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server, \
            running_app(settings_for(server)) as (app, host):
        sid = new_sid()
        url, parameters = await answered(host, "/twilio/voice", sid)
        async with websockets.connect(url):
            await wait_until(lambda: app.state.gate.pending == 1, "the first socket to be pending")
            second = await handshake_status(url)
        # Once it is gone, the URL serves its call.
        await wait_until(lambda: app.state.gate.pending == 0, "the first socket to be gone")
        result = await TwilioCallSimulator(url, call_sid=sid, custom_parameters=parameters,
                                           caller_audio=ulaw_silence(0.3)).run()
        text = await metrics(host)
    assert second == 403
    assert refused(text, "agent", "call_pending") == 1
    assert result.close_code in (None, 1000) and len(server.connections) == 1


async def test_the_outbound_answer_streams_on_a_signed_url():
    from telephony.serve import outbound
    from telephony.serve.security import OUTBOUND_ANSWER, StreamTokens

    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server, \
            running_app(settings_for(server)) as (app, host):
        signer = StreamTokens(app.state.stream_tokens.key, 600)
        request = outbound.parse_request(json.dumps({"to": "+15553334444"}).encode(), "+15550001111", {})
        answer = outbound.answer_url(request, f"http://{host}", signer, time.time())
        path_and_query = answer.split(host, 1)[1]
        sid = new_sid()
        r = await twilio_post(host, path_and_query, {"CallSid": sid}, auth_token=AUTH_TOKEN,
                              public_base=f"http://{host}")
        url, parameters = stream_from_twiml(r.text)
        result = await TwilioCallSimulator(url, call_sid=sid, custom_parameters=parameters,
                                           caller_audio=ulaw_silence(0.3)).run()
    assert url.startswith(f"ws://{host}/twilio/media-stream/")
    assert result.close_code in (None, 1000) and len(server.connections) == 1
    assert OUTBOUND_ANSWER not in url


async def test_the_service_logs_a_stream_url_without_its_mac():
    """uvicorn logs each websocket's path at INFO: the real service masks the segment's MAC there."""
    import os
    import sys
    from pathlib import Path

    from helpers import free_port

    port = free_port()
    host = f"127.0.0.1:{port}"
    async with ScriptedRealtimeServer() as server:
        env = {**os.environ, "REALTIME_URL": server.url, "REALTIME_API_KEY": API_KEY, "STREAM_SECRET": "s" * 32,
               "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "INFO",
               "SHUTDOWN_GRACE_SECONDS": "0"}
        service = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony", "serve", cwd=Path(__file__).resolve().parent.parent, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            async def up() -> bool:
                try:
                    return (await metrics(host)) != ""
                except httpx.TransportError:
                    return False

            await wait_until(up, "the service to start", timeout=20)
            sid = new_sid()
            url, _ = await answered(host, "/twilio/voice", sid)
            async with websockets.connect(url):
                pass
        finally:
            service.terminate()
            log = (await service.stdout.read()).decode()
            await service.wait()
    mac = url.rsplit(".", 1)[1]
    assert '"WebSocket /twilio/media-stream/s1.' in log and f".{sid}.[redacted]" in log, log
    assert mac not in log


async def test_the_transcription_route_refuses_even_a_signed_url_while_forwarding_is_off():
    from helpers import stream_url

    async with ScriptedRealtimeServer() as server, \
            running_app(settings_for(server).model_copy(update={"forward_to_number": ""})) as (app, host):
        status = await handshake_status(stream_url(app, host, new_sid(), "/twilio/transcribe-stream"))
        text = await metrics(host)
    assert status == 403
    assert refused(text, "transcription", "route_off") == 1 and calls_refused(text) == 0
