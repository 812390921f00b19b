"""SIP calls survive a deploy. On OpenAI's SIP route no audio passes through us, so a call need not
end with the instance steering it: SIGTERM to instance A (a real `telephony serve` process) mid-call
parks the call (a real Redis, or STATE_DIR without Redis), A's sideband closes without a hang-up,
and another instance (B, or A itself after a restart) attaches a new sideband within 2 s, greets no
one again, runs the agent's later tool call and hangs up after the goodbye; the transcript feed goes
on with its seq. OpenAI's side is the offline peers, which keep the call up while no one is attached."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
from conftest import ROOT, running_app
from helpers import follow_feed, free_port, ulaw_silence, ulaw_tone
from test_live_sip import SIP_HEADERS as LIVE_SIP_HEADERS
from test_openai_sip import SIP_HEADERS, peer_for

from telephony.offline.live_sip_peer import LiveScript, LiveSipPeer
from telephony.offline.scripted_realtime import Script
from telephony.ops.records import read_records, record_path
from telephony.settings import Settings

TOKEN = "calls-api-token-handover"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def until(check, timeout_s: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return result


class ServeProcess:
    """`telephony serve` as on a dyno, on a free port, with OpenAI's side at ``peer``."""

    def __init__(self, peer, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.env = {**os.environ, "OPENAI_WEBHOOK_SECRET": peer.secret, "OPENAI_BASE_URL": peer.base_url,
                    "OPENAI_API_KEY": peer.api_key, "CALLS_API_TOKEN": TOKEN,
                    "TWILIO_VALIDATE_SIGNATURES": "false", "HOST": "127.0.0.1",
                    "PORT": str(self.port), "SHUTDOWN_GRACE_SECONDS": "3", "LOG_LEVEL": "INFO",
                    "DATABASE_URL": f"sqlite:///{tmp / 'calls.sqlite3'}", **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.log = ""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, client: httpx.AsyncClient) -> float:
        """Starts it; the loop time it answered /healthz."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony", "serve", cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await client.get(f"http://{self.host}/healthz")).status_code == 200:
                    return asyncio.get_running_loop().time()
            except httpx.TransportError:
                pass
            assert self.proc.returncode is None and time.monotonic() < deadline, await self.stop()
            await asyncio.sleep(0.05)

    async def stop(self) -> str:
        """SIGTERM (a deploy), then its exit; its log."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.log = (await self.proc.stdout.read()).decode()
        return self.log

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def sip_settings(peer, **kw) -> Settings:
    return Settings(openai_webhook_secret=peer.secret, openai_base_url=peer.base_url, openai_api_key=peer.api_key,
                    twilio_validate_signatures=False, **kw)


async def slow_booking(call) -> dict:
    """A business tool still running when its instance stops."""
    await asyncio.sleep(30)
    return {"booked": True}


def kinds(directory: Path, call_id: str) -> list[str]:
    return [r["kind"] for r in read_records(record_path(directory, call_id))]


def assert_one_feed(turns: list[dict], call_id: str) -> None:
    assert [t["seq"] for t in turns] == list(range(1, len(turns) + 1)), turns
    assert all(t["call_sid"] == call_id for t in turns)


async def test_a_live_sip_call_moves_to_another_instance_on_sigterm(profile, redis_server, tmp_path):
    # The delegated end_call comes only once a second sideband is attached: the deploy is in between.
    script = LiveScript(dtmf="", tool_after_sidebands=2, listen_s=6.0)
    async with LiveSipPeer(script) as peer, httpx.AsyncClient() as client:
        settings_b = Settings(openai_webhook_secret=peer.secret, openai_base_url=peer.base_url,
                              openai_api_key=peer.api_key, twilio_validate_signatures=False,
                              redis_url=redis_server.url, calls_api_token=TOKEN, call_records_dir=tmp_path / "b")
        a = ServeProcess(peer, tmp_path, REDIS_URL=redis_server.url, CALL_RECORDS_DIR=str(tmp_path / "a"))
        async with running_app(settings_b, profile) as (b, host_b):
            b.state.openai_sip.start_adopting()  # the lifespan's job (off under the test server)
            try:
                await a.start(client)
                s = await peer.ring(f"http://{a.host}/openai/sip", LIVE_SIP_HEADERS)
                turns: list[dict] = []
                await until(lambda: s.sidebands == 1, what="A's sideband")
                feed = asyncio.create_task(follow_feed(client, f"http://{host_b}/calls/{s.session_id}/transcript",
                                                       turns, AUTH))
                await until(lambda: any(t["speaker"] == "caller" for t in turns), what="the caller's turn on A")
                log_a = await a.stop()
                await until(lambda: s.sidebands == 2, 5, "B's sideband")
                await asyncio.wait_for(s.ended.wait(), 20)
                assert await asyncio.wait_for(feed, 15), "the feed did not end with the call"
                metrics_b = (await client.get(f"http://{host_b}/metrics")).text
            finally:
                await a.kill()

    detached, attached = s.detached_at[0], s.attached_at[1]
    print(f"\nLive SIP handover: A's sideband closed at {detached:.0f} ms, "
          f"B attached {attached - detached:.0f} ms later")
    assert attached - detached < 2000
    assert s.accepts == 1 and s.invalid == []
    # A parked it and closed its sideband; it never hung up.
    assert f"call {s.session_id}: parked for another instance" in log_a and "hanging up" not in log_a
    assert peer.api_key not in log_a
    # One greeting, on A's sideband; B's sideband carried the tool's output; hung up after the goodbye.
    greetings = [n for e, n in zip(s.received, s.received_on)
                 if e["type"] == "session.instructions.append" and profile.greeting in e["content"]]
    assert greetings == [1], greetings
    outputs = [n for e, n in zip(s.received, s.received_on) if e["type"] == "response.item.create"]
    assert outputs == [2]
    assert s.end_reason == "close_requested" and s.hung_up_ms is not None
    assert s.goodbye_end_ms <= s.hung_up_ms <= s.goodbye_end_ms + 1500
    # One feed: A's turns, then B's, seq going on.
    assert_one_feed(turns, s.session_id)
    said = [(t["speaker"], t["text"]) for t in turns]
    assert said[:2] == [("agent", "Hello, how can I help?"), ("caller", "I am done, thank you.")], said
    assert ("agent", "Goodbye, have a nice day.") in said[2:]
    # The records: A's says the call went on elsewhere; B's goes on from there and ran the tool.
    assert "handed_over" in kinds(tmp_path / "a", s.session_id)
    records_b = read_records(record_path(tmp_path / "b", s.session_id))
    assert [r["kind"] for r in records_b].count("resumed") == 1
    assert any(r["kind"] == "tool_call" and r["name"] == "end_call" and r["outcome"] == "ok" for r in records_b)
    assert 'telephony_handoffs_total{outcome="resumed"} 1.0' in metrics_b


async def test_a_realtime_sip_call_moves_to_another_instance_on_sigterm(profile, redis_server, tmp_path):
    # The caller speaks well after the deploy; the model's answer calls end_call.
    script = Script(response_ms=600, speed=5.0, tool_calls={1: ("end_call", '{"reason": "done"}')})
    caller = ulaw_silence(6.0) + ulaw_tone(500, 0.5)
    async with peer_for(script, caller_audio=caller, listen_s=8.0) as peer, httpx.AsyncClient() as client:
        settings_b = Settings(openai_webhook_secret=peer.secret, openai_base_url=peer.base_url,
                              openai_api_key=peer.api_key, twilio_validate_signatures=False,
                              redis_url=redis_server.url, calls_api_token=TOKEN, call_records_dir=tmp_path / "b")
        a = ServeProcess(peer, tmp_path, REDIS_URL=redis_server.url, CALL_RECORDS_DIR=str(tmp_path / "a"))
        async with running_app(settings_b, profile) as (b, host_b):
            b.state.openai_sip.start_adopting()
            try:
                await a.start(client)
                call = await peer.ring(f"http://{a.host}/openai/sip", SIP_HEADERS)
                turns: list[dict] = []
                feed = asyncio.create_task(follow_feed(client, f"http://{host_b}/calls/{call.call_id}/transcript",
                                                       turns, AUTH))
                await until(lambda: call.when("output_audio_buffer.stopped") and turns, what="the greeting heard")
                log_a = await a.stop()
                await until(lambda: call.sidebands == 2, 5, "B's sideband")
                await asyncio.wait_for(call.ended.wait(), 20)
                assert await asyncio.wait_for(feed, 15), "the feed did not end with the call"
            finally:
                await a.kill()

    (closed,), opened = call.when("sideband_closed")[:1], call.when("sideband_opened")
    print(f"\nRealtime SIP handover: B attached {(opened[1] - closed) * 1000:.0f} ms after A's sideband closed")
    assert opened[1] - closed < 2.0
    assert call.accepts == 1 and call.sidebands == 2 and not call.sidebands_refused
    assert f"call {call.call_id}: parked for another instance" in log_a and "hanging up" not in log_a
    # Greeted once, by A; the tool's output and the hang-up came from B.
    greetings = [n for e, n in zip(call.received, call.received_on) if e["type"] == "response.create"
                 and "Greet" in (e.get("response") or {}).get("instructions", "")]
    assert greetings == [1], greetings
    outputs = [n for e, n in zip(call.received, call.received_on)
               if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"]
    assert outputs == [2]
    assert call.end_reason == "hung up by the service" and call.hung_up_at is not None
    assert_one_feed(turns, call.call_id)
    assert turns[0]["speaker"] == "agent" and any(t["speaker"] == "caller" for t in turns[1:])
    assert "handed_over" in kinds(tmp_path / "a", call.call_id)
    assert "resumed" in kinds(tmp_path / "b", call.call_id)


async def test_without_redis_a_single_instance_reattaches_after_its_own_restart(tmp_path):
    """STATE_DIR: the call waits in a file across the restart; the restarted process takes it."""
    script = LiveScript(dtmf="", tool_after_sidebands=2, listen_s=4.0)
    async with LiveSipPeer(script) as peer, httpx.AsyncClient() as client:
        env = {"STATE_DIR": str(tmp_path / "state"), "CALL_RECORDS_DIR": str(tmp_path / "records")}
        first = ServeProcess(peer, tmp_path, **env)
        second = ServeProcess(peer, tmp_path, **env)
        try:
            await first.start(client)
            s = await peer.ring(f"http://{first.host}/openai/sip", LIVE_SIP_HEADERS)
            await until(lambda: s.of_type("session.instructions.append") and s.goodbye_end_ms, what="the greeting")
            log_first = await first.stop()
            parked = sorted(p.name for p in (tmp_path / "state").iterdir())
            up_at = await second.start(client)
            await until(lambda: s.sidebands == 2, 5, "the restarted instance's sideband")
            attached_after_s = (s.t0 + s.attached_at[1] / 1000) - up_at
            await asyncio.wait_for(s.ended.wait(), 20)
            await asyncio.sleep(0.3)
        finally:
            await first.kill()
            log_second = await second.stop()

    print(f"\nrestart: attached {attached_after_s * 1000:.0f} ms after the restarted instance was up")
    assert attached_after_s < 2.0
    assert parked == [f"sip-{s.session_id}.json"]
    assert not list((tmp_path / "state").iterdir())  # taken
    assert "parked for another instance" in log_first and "hanging up" not in log_first
    assert f"call {s.session_id}: adopted (live)" in log_second
    greetings = [n for e, n in zip(s.received, s.received_on) if e["type"] == "session.instructions.append"]
    assert greetings[:1] == [1] and 2 not in greetings  # greeted once, before the restart
    assert [n for e, n in zip(s.received, s.received_on) if e["type"] == "response.item.create"] == [2]
    assert s.end_reason == "close_requested" and s.hung_up_ms is not None
    records = [r["kind"] for r in read_records(record_path(tmp_path / "records", s.session_id))]
    assert "handed_over" in records and "resumed" in records


async def test_without_a_place_to_park_sip_calls_are_hung_up_at_shutdown(profile):
    """No Redis and no state directory (off in code; STATE_DIR has a default): nobody could take
    the call on, so it is hung up as before."""
    async with LiveSipPeer(LiveScript(dtmf="", tool=None, listen_s=10.0)) as peer, \
            running_app(sip_settings(peer, state_dir=None), profile) as (app, host):
        assert app.state.openai_sip.lot is None
        s = await peer.ring(f"http://{host}/openai/sip", LIVE_SIP_HEADERS)
        await until(lambda: s.sidebands == 1 and s.received, what="the sideband")
        await app.state.calls.drain(0.2)
        await asyncio.wait_for(s.ended.wait(), 5)
    assert s.hung_up_ms is not None and s.sidebands == 1


async def test_a_tool_still_running_when_parked_is_answered_as_interrupted_not_run_again(profile, tmp_path):
    """The adopting instance cannot know whether the tool acted: the model is told so, once."""
    from telephony.core.call import INTERRUPTED_TOOL
    from telephony.core.function_tools import FunctionTool

    slow = FunctionTool("python", "book_table", "Books a table.", {"type": "object"},
                        "test_sip_handover:slow_booking", timeout_s=30.0)
    profile = replace(profile, function_tools=(slow,))
    script = LiveScript(dtmf="", tool=("book_table", "{}"), listen_s=6.0)
    async with LiveSipPeer(script) as peer:
        common = {"state_dir": tmp_path / "state", "call_records_dir": tmp_path}
        async with running_app(sip_settings(peer, **common), profile) as (a, host_a):
            s = await peer.ring(f"http://{host_a}/openai/sip", LIVE_SIP_HEADERS)
            await until(lambda: s.sent and any(e["type"] == "response.event" for e in s.sent), what="the tool call")
            await asyncio.sleep(0.2)
            await a.state.calls.drain(3.2)
        async with running_app(sip_settings(peer, **common), profile) as (b, _):
            b.state.openai_sip.start_adopting()
            await until(lambda: s.sidebands == 2, 5, "the second sideband")
            await until(lambda: len(s.of_type("response.item.create")) == 1, 5, "the interrupted tool's answer")
            s.ended.set()
    (answer,) = s.of_type("response.item.create")
    assert s.received_on[s.received.index(answer)] == 2
    assert answer["item"]["call_id"] == "call_1" and json.loads(answer["item"]["output"])["error"] == INTERRUPTED_TOOL


async def test_each_parked_call_is_taken_by_exactly_one_instance(profile, redis_server):
    """Three instances share Redis; A stops mid-call: B and C both watch, one of them takes it."""
    script = LiveScript(dtmf="", tool_after_sidebands=2, listen_s=2.0)
    async with LiveSipPeer(script) as peer:
        settings = sip_settings(peer, redis_url=redis_server.url)
        async with running_app(settings, profile) as (a, host_a), running_app(settings, profile) as (b, _), \
                running_app(settings, profile) as (c, _):
            for app in (a, b, c):
                app.state.openai_sip.start_adopting()
            s = await peer.ring(f"http://{host_a}/openai/sip", LIVE_SIP_HEADERS)
            await until(lambda: s.goodbye_end_ms, what="the greeting")
            await a.state.calls.drain(3.2)
            await until(lambda: s.sidebands == 2, 5, "the second sideband")
            await asyncio.wait_for(s.ended.wait(), 15)
            resumed = ['outcome="resumed"} 1.0' in app.state.metrics.render().decode() for app in (b, c)]
    assert s.sidebands == 2 and sorted(resumed) == [False, True]
    assert s.hung_up_ms is not None


async def test_a_parked_file_is_taken_once_by_two_takers(tmp_path):
    from telephony.serve.sip_parking import FileLot

    one, two = FileLot(tmp_path, 60), FileLot(tmp_path, 60)
    two._taker = "other"
    assert await one.park({"call_id": "live_1/../x", "expires_at": time.time() + 60})
    assert await one.park({"call_id": "live_old", "expires_at": time.time() - 1})  # lapsed: never taken
    taken = await asyncio.gather(one.take(), two.take())
    assert sorted(str(t and t["call_id"]) for t in taken) == ["None", "live_1/../x"]
    assert not list(tmp_path.iterdir())


def test_a_hang_up_waiting_for_the_goodbye_is_armed_again_where_the_call_goes(profile):
    """end_call came just before the deploy: the adopting instance hangs up once the goodbye is heard."""
    from telephony.core.actions import HangUp, Record, ToRealtime
    from telephony.core.call import Call
    from telephony.wire import realtime as rt

    old = Call(profile, carries_media=False)
    old.begin("rtc_1", {"call_sid": "rtc_1", "to": "sip:+15550100002@x"}, 0.0)
    old.on_realtime_open(0.0)
    old.on_realtime(rt.FunctionCall("resp_1", "item_1", "call_1", "end_call", '{"reason": "done"}'), 1.0)
    saved = json.loads(json.dumps(old.parked()))
    assert saved["greeted"] is True and saved["after_playout"]["hang_up"].startswith("end_call")

    new = Call(profile, carries_media=False)
    new.begin("rtc_1", saved["parameters"], 100.0)
    new.adopt(saved, 100.0)
    opened = new.on_realtime_open(100.0)
    assert not [a for a in opened if isinstance(a, ToRealtime)]  # no second greeting
    assert [a.kind for a in opened if isinstance(a, Record)] == ["resumed"]
    later = new.on_tick(102.0)
    assert any(isinstance(a, HangUp) for a in later), later
