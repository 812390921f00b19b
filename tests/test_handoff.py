"""Calls survive a deploy: SIGTERM to instance A (a real `telephony serve` process) during a call;
A saves the call in a real Redis and moves it through the (fake) Twilio REST API; the simulated
caller follows the new TwiML to the new stream, as Twilio does, and lands on instance B; B's
Realtime session gets the conversation so far, and audio flows again both ways."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import xml.etree.ElementTree as ET

import httpx
import pytest
from conftest import ROOT, running_app
from fake_twilio import ACCOUNT_SID, AUTH_TOKEN, running_fake_twilio
from helpers import active_spans, free_port, simulated_call, ulaw_silence, ulaw_tone
from test_shared_state import TOKEN, sse_turns, until

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.settings import Settings

SECRET = "stream-secret-shared-by-instances"
API_KEY = "sk-handoff-SECRET"


def texts_added(conn) -> list[tuple[str, str]]:
    return [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in conn.of_type("conversation.item.create")]


async def test_sigterm_hands_a_live_call_over_to_another_instance(redis_server, tmp_path):
    script = Script(response_ms=1000, speed=2.0)
    async with ScriptedRealtimeServer(script) as upstream, running_fake_twilio() as twilio:
        common = dict(realtime_url=upstream.url, realtime_api_key=API_KEY, calls_api_token=TOKEN,
                      stream_secret=SECRET, redis_url=redis_server.url, twilio_account_sid=ACCOUNT_SID,
                      twilio_auth_token=AUTH_TOKEN, twilio_api_base_url=twilio.base_url,
                      # Both instances record to one store and keep one history (as with S3 and PostgreSQL).
                      recordings_url=f"file://{tmp_path / 'recordings'}",
                      database_url=f"sqlite:///{tmp_path / 'calls.sqlite3'}")
        port_b = free_port()
        settings_b = Settings(**common, public_url=f"http://127.0.0.1:{port_b}", call_records_dir=tmp_path / "b")
        async with running_app(settings_b) as (b, host_b), httpx.AsyncClient() as client:
            # A: the real service, as on a dyno; Twilio's router would send the new stream to B.
            port_a = free_port()
            env = {**os.environ, "REALTIME_URL": upstream.url, "REALTIME_API_KEY": API_KEY,
                   "STREAM_SECRET": SECRET, "REDIS_URL": redis_server.url, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                   "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_API_BASE_URL": twilio.base_url,
                   "PUBLIC_URL": f"http://{host_b}", "HOST": "127.0.0.1", "PORT": str(port_a),
                   "SHUTDOWN_GRACE_SECONDS": "3", "LOG_LEVEL": "INFO", "CALL_RECORDS_DIR": str(tmp_path / "a"),
                   "RECORDINGS_URL": common["recordings_url"], "DATABASE_URL": common["database_url"]}
            a = await asyncio.create_subprocess_exec(sys.executable, "-m", "telephony", "serve", cwd=ROOT, env=env,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                async def a_up():
                    try:
                        return (await client.get(f"http://127.0.0.1:{port_a}/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False
                await until(a_up, 20, "A to start")
                # The call on A: the greeting, the caller's words, the agent's answer.
                first = simulated_call(b, f"127.0.0.1:{port_a}", caller_audio=ulaw_silence(1.0) + ulaw_tone(500, 0.6),
                                       duration_s=30, parameters={"from": "+15550001111", "to": "+15550002222"})
                sid = first.call_sid
                call_a = asyncio.create_task(first.run())
                await until(lambda: b.state.transcripts.followable(sid), what="the call's feed")
                feed = asyncio.create_task(sse_turns(client, f"http://{host_b}/calls/{sid}/transcript"))
                await asyncio.sleep(4.0)  # the agent has answered the caller
                sigterm_at = time.monotonic()
                a.send_signal(signal.SIGTERM)
                update = await until(lambda: _first(twilio.updates), 10, "Twilio's call update")
                # Twilio: the old stream stops, the new TwiML's stream opens.
                first.redirect()
                stopped_at = time.monotonic()
                updated_sid, form, updated_at = update
                stream = ET.fromstring(form["Twiml"]).find("./Connect/Stream")
                parameters = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
                second = TwilioCallSimulator(stream.get("url"), call_sid=sid, custom_parameters=parameters,
                                             caller_audio=ulaw_silence(0.8) + ulaw_tone(700, 0.6), duration_s=4.0)
                call_b = asyncio.create_task(second.run())
                await second.started.wait()
                stream_up_s = time.monotonic() - stopped_at
                await until(lambda: _later(lambda: len(upstream.connections) == 2 and
                                           upstream.connections[1].of_type("session.update")), 5, "B's session")
                session_up_s = time.monotonic() - stopped_at
                result_a, result_b = await asyncio.gather(call_a, call_b)
                turns = await asyncio.wait_for(feed, 10)
                code = await asyncio.wait_for(a.wait(), 15)
                metrics_b = (await client.get(f"http://{host_b}/metrics")).text
                # The recording goes on in a second part, on B; the call's history names both.
                auth = {"Authorization": f"Bearer {TOKEN}"}

                async def both_recorded():
                    history = (await client.get(f"http://{host_b}/calls/{sid}", headers=auth)).json()
                    return [e for e in history.get("events", ()) if e["kind"] == "recording"]
                recorded: list = []
                deadline = time.monotonic() + 15
                while len(recorded) < 2 and time.monotonic() < deadline:
                    recorded = await both_recorded()
                    await asyncio.sleep(0.2)
                parts = [await client.get(f"http://{host_b}/calls/{sid}/recording?part={n}", headers=auth)
                         for n in (1, 2, 3)]
            finally:
                if a.returncode is None:
                    a.kill()
                    await a.wait()
            log_a = (await a.stdout.read()).decode()

    print(f"\nhandoff: SIGTERM → Twilio call update {updated_at - sigterm_at:.3f} s; "
          f"caller's stream down {stream_up_s:.3f} s (A's stream stopped → B's stream open); "
          f"B's model live with the conversation {session_up_s:.3f} s after A's stream stopped")
    assert code in (0, -signal.SIGTERM), log_a
    assert updated_sid == sid and stream.get("url").startswith(f"ws://{host_b}/twilio/media-stream/s1.")
    assert sid in stream.get("url")  # the call's own signed URL, which B admitted
    assert parameters["resume"] == "1" and parameters["from"] == "+15550001111" and parameters["token"]
    assert f"call {sid}: handed over to a new stream" in log_a and "shutting down: ending" not in log_a
    assert API_KEY not in log_a and AUTH_TOKEN not in log_a
    # A's stream was stopped by Twilio (not ended by A, which would speak the fallback).
    assert result_a.closed_by_bridge_at is None and active_spans(result_a.agent)
    # B's session got the conversation so far, instead of a greeting.
    conn_a, conn_b = upstream.connections
    earlier = texts_added(conn_b)
    assert [role for role, _ in earlier] == ["assistant", "user", "assistant"], earlier
    assert "Scripted response number 1, a tone of 440 hertz.".startswith(earlier[0][1])  # what was heard
    assert earlier[1][1].startswith("a 500 Hz tone")
    assert earlier[2][1] == "Scripted response number 2, a tone of 660 hertz."
    assert conn_b.received_types().index("conversation.item.create") < conn_b.received_types().index(
        "input_audio_buffer.append")
    # Audio flows again both ways: the caller is heard on B, and B's answer is heard by the caller.
    assert conn_b.of_type("input_audio_buffer.append")
    assert active_spans(result_b.agent), "the caller heard nothing from B"
    assert result_b.timeline[0].kind != "closed_by_bridge"
    # One transcript, one call: seq goes on across the handoff, then the feed ends with the call.
    assert [t["seq"] for t in turns] == list(range(1, len(turns) + 1)) and len(turns) >= 5, turns
    assert sorted(t["speaker"] for t in turns[:3]) == ["agent", "agent", "caller"]  # A's three turns
    assert any(t["text"].startswith("a 700 Hz tone") for t in turns[3:])
    assert 'telephony_handoffs_total{outcome="resumed"} 1.0' in metrics_b
    # The call's records: A's says where it went, B's goes on from there.
    kinds = {side: [json.loads(line)["kind"] for line in (tmp_path / side / f"{sid}.jsonl").read_text().splitlines()]
             for side in ("a", "b")}
    assert "handed_over" in kinds["a"] and kinds["a"].index("handed_over") < kinds["a"].index("end"), kinds
    records_a = [json.loads(line) for line in (tmp_path / "a" / f"{sid}.jsonl").read_text().splitlines()]
    (end_a,) = [r for r in records_a if r["kind"] == "end"]
    assert end_a["reason"] == "handed over", end_a  # not "caller hung up" when Twilio stopped it
    (summary_a,) = [r for r in records_a if r["kind"] == "summary"]
    assert summary_a["outcome"] == "handed_over"  # counted where the call ends: once, on B
    assert "resumed" in kinds["b"], kinds
    # One recording per stream, A's then B's, each a WAV the store serves; no third.
    assert len(recorded) == 2, recorded
    assert [p.status_code for p in parts] == [200, 200, 404], parts
    assert all(p.headers["content-type"].startswith("audio/") and p.content[:4] == b"RIFF" for p in parts[:2])
    assert parts[0].headers["x-recording-parts"] == "2"
    a_seconds, b_seconds = (len(p.content) / 16000 for p in parts[:2])  # stereo μ-law: 16 kB a second
    assert a_seconds > 4.0 and 2.0 < b_seconds < 8.0, (a_seconds, b_seconds)


async def _first(items):
    return items[0] if items else None


async def _later(check):
    return check()


async def listed(app, expected: bool) -> bool:
    return bool(await app.state.shared.list_calls()) == expected


@pytest.mark.parametrize("twilio_fault", ["slow", "caller_hung_up"])
async def test_a_handoff_that_twilio_does_not_take_ends_the_call_cleanly(redis_server, twilio_fault):
    """Issue 22 item 13: the call used to be marked handed over before Twilio answered and undone
    only on a TwilioError: a REST timeout (or a caller gone during the redirect) left its feed open
    forever, its GET /calls entry listed, and neither outcome counted."""
    async with ScriptedRealtimeServer(Script(respond_to_turns=False, response_ms=300)) as upstream, \
            running_fake_twilio() as twilio:
        if twilio_fault == "slow":
            twilio.update_delay_s = 8.0  # past the drain's handoff budget
        else:
            twilio.fail_with = (400, 21220, "Call is not in-progress. Cannot redirect.")
        settings = Settings(realtime_url=upstream.url, realtime_api_key=API_KEY, calls_api_token=TOKEN,
                            stream_secret=SECRET, redis_url=redis_server.url, twilio_account_sid=ACCOUNT_SID,
                            twilio_auth_token=AUTH_TOKEN, twilio_api_base_url=twilio.base_url,
                            public_url="https://bridge.example.com")
        async with running_app(settings) as (app, host):
            sim = simulated_call(app, host, caller_audio=ulaw_silence(20), duration_s=20,
                                 parameters={"from": "+15550001111", "to": "+15550002222"})
            call = asyncio.create_task(sim.run())
            await until(lambda: app.state.transcripts.followable(sim.call_sid), what="the call's feed")
            await until(lambda: listed(app, True), what="the call listed")
            drained_at = time.monotonic()
            await app.state.calls.drain(3.2)  # SIGTERM: the grace is all handoff budget
            result = await asyncio.wait_for(call, 10)
            drain_s = time.monotonic() - drained_at
            await until(lambda: listed(app, False), what="the entry dropped")
            feed_open = await app.state.transcripts.followable(sim.call_sid)
            metrics = app.state.metrics.render().decode()
    assert twilio.updates, "no handoff was tried"
    assert result.closed_by_bridge_at is not None  # ended by us, so Twilio speaks the fallback
    assert not feed_open  # the feed ended with the call
    assert drain_s < 6.0
    assert 'telephony_handoffs_total{outcome="failed"} 1.0' in metrics
    assert 'telephony_handoffs_total{outcome="handed_over"}' not in metrics
    assert 'telephony_calls_total{outcome="abnormal"} 1.0' in metrics


def test_the_handoff_twiml_stays_small_at_the_largest_parameters(profile):
    """Issue 22 item 12: the redirect used to inline every parameter; a long outbound call's made
    5,033 characters, which Twilio refuses (32018) and the call ended at the deploy."""
    from telephony.core.call import Call
    from telephony.serve.handoff import Handoff
    from telephony.serve.security import StreamTokens
    from telephony.wire import twilio as tw

    sid = "CA" + "4" * 32
    largest = {"from": "+15550001111", "to": "+15550002222", "direction": "outbound-api", "profile": "agent",
               "instructions": "Say <this> & that. " * 105, "greeting": "g" * 400, "voicemail": "v" * 400,
               "voice": "v" * 40, "metadata": json.dumps({"k": '"' * 240})}
    tokens = StreamTokens(SECRET.encode(), 60)
    old = Call(profile)
    old.on_twilio(tw.Start("MZ1", sid, custom_parameters=tokens.with_token({"call_sid": sid, **largest}, 0)), 0.0)
    handoff = Handoff(None, lambda: None, "wss://bridge.example.com/twilio/media-stream", tokens, None, None,
                      profile.fallback, 120)
    twiml = handoff.redirect_twiml(old, time.time())
    assert len(twiml) <= 4000, len(twiml)
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    inline = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
    assert set(inline) == {"call_sid", "resume", "token", "profile", "from", "to", "direction"}
    # The new stream gets the rest from the snapshot saved in Redis.
    new = Call(profile)
    new.on_twilio(tw.Start("MZ2", sid, custom_parameters=inline), 0.0)
    new.resume(json.loads(json.dumps(old.snapshot())))
    assert {k: new.parameters.get(k) for k in largest} == largest


@pytest.mark.parametrize("moved", [True, False])
def test_twilio_stopping_the_stream_before_its_rest_answer_ends_the_record_as_twilio_answers(profile, moved):
    """Twilio stops the old stream as it acts on the update, often before its REST answer: the
    record used to end "caller hung up (Twilio stop)" for a call that went on elsewhere."""
    from telephony.core.actions import EndStream, Record
    from telephony.core.call import Call
    from telephony.wire import twilio as tw

    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA" + "3" * 32), 0.0)
    call.on_realtime_open(0.0)
    assert call.on_handing_over() == []
    stopped = call.on_twilio(tw.Stop(), 1.0)
    assert any(isinstance(a, EndStream) for a in stopped)
    assert not [a for a in stopped if isinstance(a, Record) and a.kind == "end"]  # held
    (end,) = [a for a in call.on_handoff_result(moved, 2) if isinstance(a, Record) and a.kind == "end"]
    assert end.data["reason"] == ("handed over" if moved else "caller hung up (Twilio stop)")
