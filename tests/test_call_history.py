"""Call history through the real app: calls driven over real sockets (the Twilio simulator, the
scripted Realtime server, OpenAI's SIP peer), written to a real database (an SQLite file, a real
PostgreSQL), then read back through the calls API. The database stopped or locked mid-call costs
the call nothing, and what it missed is retried, then dropped and counted."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from conftest import running_app
from helpers import simulated_call, ulaw_silence, ulaw_tone, wait_until
from postgres_server import PASSWORD, postgres_server  # noqa: F401 (fixture: a real PostgreSQL)

from telephony.history import database
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings, SettingsError

TOKEN = "history-api-token-123"
CALLER = ulaw_silence(0.5) + ulaw_tone(500, 0.6) + ulaw_silence(3.0)  # talks over the greeting, then waits
PARAMETERS = {"from": "+15550001111", "to": "+15550002222", "direction": "inbound"}


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(**{"twilio_validate_signatures": False, "realtime_url": server.url, "realtime_api_key": "sk-x",
                       "calls_api_token": TOKEN, **overrides})


def api(host: str, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"http://{host}", headers=headers, timeout=10)


async def ended(client: httpx.AsyncClient, sid: str, timeout: float = 15.0) -> dict:
    """The call's history once its end is written (the writer is behind the call by design)."""
    found: dict = {}

    async def written() -> bool:
        r = await client.get(f"/calls/{sid}")
        found.update(r.json() if r.status_code == 200 else {})
        return found.get("state") == "ended"

    await wait_until(written, f"call {sid} ended in the history", timeout, every=0.05)
    return found


def the_call_script() -> Script:
    # The greeting is cut by the caller at 0.5 s; the answer to their turn calls end_call.
    return Script(response_ms=1500, speed=5.0, tool_calls={1: ("end_call", '{"reason": "done"}')})


async def test_a_call_is_in_the_history_with_its_turns_events_and_latency():
    async with ScriptedRealtimeServer(the_call_script()) as server, \
            running_app(settings_for(server)) as (app, host), api(host) as client:
        sim = simulated_call(app, host, caller_audio=CALLER, parameters=PARAMETERS)
        running = asyncio.create_task(sim.run())
        # Readable while it is going on.
        await wait_until(lambda: _state(client, sim.call_sid, "live"), "the call live in the history", 10)
        result = await running
        call = await ended(client, sim.call_sid)
        listed = (await client.get("/calls", params={"state": "ended"})).json()
        live = (await client.get("/calls")).json()

    assert result.agent and result.clears  # the call itself went as ever
    assert Path(database.DEFAULT_SQLITE_FILE).is_file()  # the default: SQLite (here, in the test's directory)
    assert {k: call[k] for k in ("call_sid", "stream_sid", "route", "dialect", "profile", "from", "to",
                                 "direction", "outcome", "end_reason", "handoffs")} == {
        "call_sid": sim.call_sid, "stream_sid": sim.stream_sid, "route": "twilio", "dialect": "beta",
        "profile": "agent", "from": "+15550001111", "to": "+15550002222", "direction": "inbound",
        "outcome": "normal", "end_reason": "caller hung up (Twilio stop)", "handoffs": 0}
    assert call["started_at"].endswith("Z") and 2.0 < call["duration_s"] < 8.0
    speakers = [t["speaker"] for t in call["turns"]]
    assert speakers == ["agent", "caller", "agent"]
    greeting, caller, answer = call["turns"]
    # The greeting: cut where the caller came in, with what they heard of it.
    assert greeting["interrupted"] and 300 < greeting["heard_ms"] < 700
    assert greeting["text"].startswith("Scripted") and len(greeting["text"]) < 20
    assert greeting["start_ms"] < 200 and 400 < greeting["end_ms"] < 800
    assert caller["text"].startswith("a 500 Hz tone") and 1100 < caller["end_ms"] < 2000
    # The answer: how long the caller waited, split into the model's share and ours.
    assert answer["latency_ms"] is not None and answer["start_ms"] >= caller["end_ms"]
    assert answer["latency_ms"] == pytest.approx(answer["model_ms"] + answer["bridge_ms"], abs=0.2)
    assert call["latency"]["turns"] == 1 and call["latency"]["median_ms"] == answer["latency_ms"]
    kinds = [e["kind"] for e in call["events"]]
    assert {"barge_in", "tool_call", "hang_up"} <= set(kinds)
    (tool,) = [e for e in call["events"] if e["kind"] == "tool_call"]
    assert tool["name"] == "end_call" and tool["outcome"] == "ok"
    assert [e["at_ms"] for e in call["events"]] == sorted(e["at_ms"] for e in call["events"])
    assert [c["call_sid"] for c in listed["calls"]] == [sim.call_sid] and listed["next_before"] is None
    assert "turns" not in listed["calls"][0]  # the list is of calls; a call's page has its timeline
    assert live == {"calls": []}  # GET /calls without state= is the live calls, as before


async def _state(client: httpx.AsyncClient, sid: str, state: str) -> bool:
    r = await client.get(f"/calls/{sid}")
    return r.status_code == 200 and r.json()["state"] == state


async def test_a_greeting_paused_by_a_backchannel_and_resumed_says_so():
    """The caller's short sound over the greeting pauses it; judged a backchannel, it goes on whole:
    the turn is whole and resumed, and the interruption's decision is an event."""
    script = Script(response_ms=3000, speed=1.2, caller_transcripts=("Mm-hmm.",))
    caller = ulaw_silence(1.0) + ulaw_tone(500, 0.3) + ulaw_silence(4.5)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(settings_for(server, audio_codec="g711_ulaw")) as (app, host), api(host) as client:
        sim = simulated_call(app, host, caller_audio=caller)
        await sim.run()
        call = await ended(client, sim.call_sid)
    agent = [t for t in call["turns"] if t["speaker"] == "agent"]
    assert len(agent) == 1 and agent[0]["resumed"] and not agent[0]["interrupted"]
    assert agent[0]["text"] == "Scripted response number 1, a tone of 440 hertz."  # whole
    (pause,) = [e for e in call["events"] if e["kind"] == "interruption"]
    assert pause["decision"] == "resumed" and 1000 < pause["at_ms"] < 3000
    assert pause["data"]["transcript"] == "Mm-hmm." and pause["data"]["paused_ms"] > 0


async def test_the_history_pages_newest_first():
    script = Script(response_ms=300, speed=5.0)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(settings_for(server)) as (app, host), api(host) as client:
        sims = []
        for _ in range(3):  # one after another, so their start times are distinct
            sims.append(simulated_call(app, host, caller_audio=ulaw_silence(0.5)))
            await sims[-1].run()
        for sim in sims:
            await ended(client, sim.call_sid)
        first = (await client.get("/calls", params={"state": "ended", "limit": 2})).json()
        second = (await client.get("/calls", params={"state": "ended", "limit": 2,
                                                     "before": first["next_before"]})).json()
    newest_first = [s.call_sid for s in reversed(sims)]
    assert [c["call_sid"] for c in first["calls"]] == newest_first[:2]
    assert first["next_before"] == first["calls"][-1]["started_at"]
    assert [c["call_sid"] for c in second["calls"]] == newest_first[2:] and second["next_before"] is None


async def test_the_history_api_wants_the_token_and_says_what_is_wrong_with_a_request():
    async with ScriptedRealtimeServer(Script()) as server, running_app(settings_for(server)) as (app, host):
        async with api(host, token=None) as anonymous, api(host, token="wrong") as wrong, api(host) as client:
            for c in (anonymous, wrong):
                for path in ("/calls/CA" + "0" * 32, "/calls?state=ended"):
                    r = await c.get(path)
                    assert r.status_code == 401 and r.json()["error"] == "missing or wrong bearer token"
            problems = {
                "/calls?state=gone": "state must be live",
                "/calls?state=ended&limit=0": "limit must be a whole number from 1 to 200",
                "/calls?state=ended&limit=201": "limit must be",
                "/calls?state=ended&limit=ten": "limit must be",
                "/calls?state=ended&before=yesterday": "before must be an ISO 8601 time",
                "/calls/" + "A" * 129: "not a call sid",
                "/calls/CA%20x": "not a call sid",
            }
            for path, reason in problems.items():
                r = await client.get(path)
                assert r.status_code == 400 and reason in r.json()["error"], (path, r.text)
            r = await client.get("/calls/CA" + "0" * 32)
            assert r.status_code == 404 and "no call" in r.json()["error"]
    # Safe by default: without CALLS_API_TOKEN the history is not served at all.
    async with ScriptedRealtimeServer(Script()) as server, \
            running_app(settings_for(server, calls_api_token="")) as (app, host), api(host) as client:
        r = await client.get("/calls/CA" + "0" * 32)
        assert r.status_code == 503 and "CALLS_API_TOKEN" in r.json()["error"]


async def test_the_recording_made_after_the_call_ended_is_named_in_its_history(tmp_path):
    async with ScriptedRealtimeServer(Script(response_ms=300, speed=5.0)) as server, \
            running_app(settings_for(server, recordings_url=f"file://{tmp_path}")) as (app, host), \
            api(host) as client:
        sim = simulated_call(app, host, caller_audio=ulaw_silence(1.0))
        await sim.run()
        call = await ended(client, sim.call_sid)
        await wait_until(lambda: _has_event(client, sim.call_sid, "recording"), "the recording's event", 10)
        call = (await client.get(f"/calls/{sim.call_sid}")).json()
    (recording,) = [e for e in call["events"] if e["kind"] == "recording"]
    assert recording["data"]["url"].startswith(f"{tmp_path}/{sim.call_sid}/")  # where the file store put it
    assert recording["at_ms"] >= round(call["duration_s"] * 1000) - 1  # after the end, on the call's clock


async def _has_event(client: httpx.AsyncClient, sid: str, kind: str) -> bool:
    r = await client.get(f"/calls/{sid}")
    return r.status_code == 200 and any(e["kind"] == kind for e in r.json()["events"])


async def test_call_history_off_opens_no_database_and_says_so():
    async with ScriptedRealtimeServer(Script(response_ms=300, speed=5.0)) as server, \
            running_app(settings_for(server, call_history=False)) as (app, host), api(host) as client:
        sim = simulated_call(app, host, caller_audio=ulaw_silence(0.5))
        result = await sim.run()
        r = await client.get(f"/calls/{sim.call_sid}")
    assert result.agent and app.state.history is None
    assert r.status_code == 503 and "CALL_HISTORY=false" in r.json()["error"]
    assert not Path(database.DEFAULT_SQLITE_FILE).exists()


# --- The database locked or stopped mid-call ---


def quick_retries(app, attempts: int, backoff_s: float = 0.1) -> None:
    app.state.history.attempts, app.state.history.backoff_s = attempts, backoff_s


async def test_a_locked_sqlite_file_costs_the_call_nothing_and_the_history_catches_up(tmp_path, monkeypatch):
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "calls.sqlite3"
    async with ScriptedRealtimeServer(the_call_script()) as server, \
            running_app(settings_for(server, database_url=f"sqlite:///{path}")) as (app, host), \
            api(host) as client:
        quick_retries(app, attempts=8)  # 0.1 + 0.2 + … + 6.4 s: longer than the lock is held
        sim = simulated_call(app, host, caller_audio=CALLER)
        running = asyncio.create_task(sim.run())
        await wait_until(lambda: _state(client, sim.call_sid, "live"), "the call's start written", 10)
        lock = sqlite3.connect(path, isolation_level=None, timeout=5)
        lock.execute("BEGIN EXCLUSIVE")  # another process writing: every write of ours waits, then fails
        result = await running  # the call goes on under the lock: barge-in, answer, hang-up
        await wait_until(lambda: app.state.history.stats.failed_attempts >= 2, "writes failing under the lock")
        lock.execute("COMMIT")
        lock.close()
        call = await ended(client, sim.call_sid)
    assert result.clears and result.agent and call["outcome"] == "normal"
    assert [t["speaker"] for t in call["turns"]] == ["agent", "caller", "agent"]
    assert app.state.history.stats.dropped == 0


async def test_rows_that_cannot_be_written_are_dropped_counted_and_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 20)
    path = tmp_path / "calls.sqlite3"
    async with ScriptedRealtimeServer(the_call_script()) as server, \
            running_app(settings_for(server, database_url=f"sqlite:///{path}")) as (app, host), \
            api(host) as client:
        quick_retries(app, attempts=2, backoff_s=0.05)
        warm = simulated_call(app, host, caller_audio=ulaw_silence(0.3))
        await warm.run()
        await ended(client, warm.call_sid)
        lock = sqlite3.connect(path, isolation_level=None, timeout=5)
        lock.execute("BEGIN EXCLUSIVE")
        with caplog.at_level(logging.WARNING, "telephony.history"):
            sim = simulated_call(app, host, caller_audio=CALLER)
            result = await sim.run()
            await wait_until(lambda: app.state.history.pending() == 0, "the writer to give up", 10)
            lock.execute("COMMIT")
            lock.close()
            r = await client.get(f"/calls/{sim.call_sid}")
            # Writable again: the next call is written whole.
            after = simulated_call(app, host, caller_audio=ulaw_silence(0.3))
            await after.run()
            await ended(client, after.call_sid)
    assert result.clears and result.agent  # the call did not notice
    assert r.status_code == 404  # its rows were given up on…
    dropped = app.state.history.stats.dropped
    assert dropped > 0
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "telephony.history"]
    assert any("rows not written (OperationalError: database is locked, 2 attempts)" in line for line in lines)
    assert f"rows were dropped meanwhile ({dropped} since start)" in lines[-1]  # …and counted in the log


# --- PostgreSQL ---


async def test_a_call_on_postgresql_is_in_the_history(postgres_server):
    url = postgres_server.url("postgres")  # Heroku's form of the URL
    async with ScriptedRealtimeServer(the_call_script()) as server, \
            running_app(settings_for(server, database_url=url)) as (app, host), api(host) as client:
        sim = simulated_call(app, host, caller_audio=CALLER, parameters=PARAMETERS)
        await sim.run()
        call = await ended(client, sim.call_sid)
        listed = (await client.get("/calls", params={"state": "ended"})).json()
    assert app.state.history.database.url.startswith("postgresql+asyncpg://")
    assert call["from"] == "+15550001111" and call["outcome"] == "normal"
    assert [t["speaker"] for t in call["turns"]] == ["agent", "caller", "agent"]
    assert call["turns"][0]["interrupted"] and call["turns"][2]["latency_ms"] is not None
    assert [c["call_sid"] for c in listed["calls"]] == [sim.call_sid]


async def test_postgresql_stopped_mid_call_loses_no_audio_and_the_history_catches_up(postgres_server, caplog):
    async with ScriptedRealtimeServer(the_call_script()) as server, \
            running_app(settings_for(server, database_url=postgres_server.url())) as (app, host), \
            api(host) as client:
        quick_retries(app, attempts=8, backoff_s=0.2)
        with caplog.at_level(logging.DEBUG):
            sim = simulated_call(app, host, caller_audio=CALLER)
            running = asyncio.create_task(sim.run())
            await wait_until(lambda: _state(client, sim.call_sid, "live"), "the call's start written", 10)
            await asyncio.to_thread(postgres_server.stop, "immediate")  # as a crash, mid-call
            r = await client.get(f"/calls/{sim.call_sid}")
            result = await running
            await wait_until(lambda: app.state.history.stats.failed_attempts >= 1, "writes failing")
            await asyncio.to_thread(postgres_server.start)
            call = await ended(client, sim.call_sid, timeout=30)
    assert r.status_code == 503 and "cannot be read" in r.json()["error"]  # said so, promptly
    assert result.clears and result.agent
    assert [t["speaker"] for t in call["turns"]] == ["agent", "caller", "agent"]
    assert call["outcome"] == "normal" and app.state.history.stats.dropped == 0
    assert any("unavailable" in rec.getMessage() for rec in caplog.records if rec.name == "telephony.history")
    for rec in caplog.records:
        assert PASSWORD not in rec.getMessage() and PASSWORD not in str(rec.__dict__)


# --- The other routes: OpenAI's SIP route, the transcription fork, outbound calls ---


async def test_a_call_on_openai_sip_route_is_in_the_history(profile):
    from test_openai_sip import CALLER as SIP_CALLER
    from test_openai_sip import app_settings, peer_for, ring_and_wait

    script = Script(response_ms=600, speed=5.0, response_lengths={1: 1500},
                    tool_calls={1: ("end_call", '{"reason": "done"}')})
    async with peer_for(script, caller_audio=SIP_CALLER, listen_s=6.0) as peer, \
            running_app(app_settings(peer, calls_api_token=TOKEN), profile) as (app, host), api(host) as client:
        sip_call = await ring_and_wait(peer, host)
        call = await ended(client, sip_call.call_id)
    assert call["route"] == "openai_sip" and call["stream_sid"] is None
    assert call["from"] == "sip:+15550100001@pstn.example.com" and call["outcome"] == "normal"
    assert {"caller", "agent"} <= {t["speaker"] for t in call["turns"]}
    assert any(e["kind"] == "tool_call" and e["name"] == "end_call" for e in call["events"])


async def test_a_transfer_on_openai_sip_route_is_in_the_history(profile):
    from test_openai_sip import CALLER as SIP_CALLER
    from test_openai_sip import app_settings, peer_for, ring_and_wait

    profile = replace(profile, transfer_targets={"desk": "sip:desk@pbx.example.com"})
    script = Script(response_ms=600, speed=5.0, tool_calls={1: ("transfer_call", '{"destination": "desk"}')})
    async with peer_for(script, caller_audio=SIP_CALLER, listen_s=5.0) as peer, \
            running_app(app_settings(peer, calls_api_token=TOKEN), profile) as (app, host), api(host) as client:
        sip_call = await ring_and_wait(peer, host)
        call = await ended(client, sip_call.call_id)
    events = {e["kind"]: e for e in call["events"]}
    assert events["tool_call"]["name"] == "transfer_call" and events["tool_call"]["outcome"] == "ok"
    assert events["transfer"]["data"] == {"timed_out": False}  # once the agent's words were heard…
    assert events["transferred"]["data"] == {"target": "sip:desk@pbx.example.com"}  # …referred
    assert events["transfer"]["at_ms"] <= events["transferred"]["at_ms"]


async def test_a_forked_call_is_in_the_history():
    from test_transcription import fork_audio

    async with ScriptedRealtimeServer(Script(silence_ms=300)) as server, \
            running_app(settings_for(server, forward_to_number="+15554443333")) as (app, host), \
            api(host) as client:
        caller, callee = fork_audio()
        sim = simulated_call(app, host, path="/twilio/transcribe-stream", caller_audio=caller,
                             outbound_audio=callee, parameters={"from": "+15551110000"})
        await sim.run()
        call = await ended(client, sim.call_sid)
    assert call["route"] == "transcription" and call["from"] == "+15551110000"
    assert [(t["speaker"], t["text"].split(" for ")[0]) for t in call["turns"]] == [
        ("caller", "a 500 Hz tone"), ("callee", "a 1000 Hz tone"), ("caller", "a 700 Hz tone")]


async def test_an_outbound_call_has_its_direction_answering_machine_verdict_and_keys_pressed():
    from fake_twilio import AUTH_TOKEN, running_fake_twilio
    from helpers import twilio_post
    from test_outbound import settings as outbound_settings

    script = Script(response_ms=2000, speed=5.0, respond_to_turns=False)
    async with running_fake_twilio() as fake, ScriptedRealtimeServer(script) as server, \
            running_app(outbound_settings(fake, server.url).model_copy(update={"calls_api_token": TOKEN})) \
            as (app, host), api(host) as client:
        sim = simulated_call(app, host, caller_audio=b"", duration_s=3.0,
                             parameters={"direction": "outbound-api", "to": "+15557654321", "from": "+15550001234"})
        sim.extra = [(0.2, json.dumps({"event": "dtmf", "streamSid": sim.stream_sid, "sequenceNumber": "2",
                                       "dtmf": {"track": "inbound_track", "digit": "7"}}))]
        running = asyncio.create_task(sim.run())
        await wait_until(lambda: _state(client, sim.call_sid, "live"), "the call live in the history", 10)
        r = await twilio_post(host, "/twilio/amd", {"CallSid": sim.call_sid, "AnsweredBy": "human"}, AUTH_TOKEN)
        assert r.status_code == 204
        await running
        call = await ended(client, sim.call_sid)
    assert call["direction"] == "outbound-api" and call["to"] == "+15557654321"
    assert call["answered_by"] == "human"
    assert [e["data"] for e in call["events"] if e["kind"] == "answered_by"] == [{"answered_by": "human"}]
    (keyed,) = [e for e in call["events"] if e["kind"] == "dtmf"]  # keys pressed: flushed after a 1 s gap
    assert keyed["data"] == {"digits": "7"} and 1100 < keyed["at_ms"] < 2000


# --- Settings and schema ---


def test_database_url_forms_and_refusals_never_show_the_password(tmp_path):
    assert database.database_for("").url == f"sqlite+aiosqlite:///{Path(database.DEFAULT_SQLITE_FILE).resolve()}"
    assert database.database_for("sqlite:///calls.db").url == "sqlite+aiosqlite:///calls.db"
    heroku = database.database_for("postgres://u:secret-pw-1@db.example.com:5433/d1?sslmode=require")
    assert heroku.url == "postgresql+asyncpg://u:secret-pw-1@db.example.com:5433/d1"
    assert heroku.connect_args["ssl"] == "require"
    assert heroku.describe() == "PostgreSQL db.example.com:5433/d1"
    settings = Settings.from_env({"DATABASE_URL": "postgresql://u:secret-pw-1@db.example.com/d1"})
    assert "secret-pw-1" in settings.secrets() and "secret-pw-1" not in repr(settings)
    for url, reason in [("mysql://u:secret-pw-1@h/d", "scheme 'mysql' is not supported"),
                        ("sqlite://", "must be a URL"), ("sqlite:///:memory:", "needs a file path"),
                        ("postgresql:///d?user=u&password=secret-pw-1", "needs a host")]:
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"DATABASE_URL": url})
        assert reason in str(refused.value) and "secret-pw-1" not in str(refused.value)
        assert str(refused.value).startswith("DATABASE_URL: ")
    assert Settings.from_env({"CALL_HISTORY": "false"}).call_history is False


async def test_the_migrations_make_the_tables_the_models_describe(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.config import Config

    from telephony.history.models import SCHEMA_REVISION, metadata

    config = Config()
    config.set_main_option("script_location", database.MIGRATIONS)  # from the package, as a wheel has it
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION
    db = database.database_for(f"sqlite:///{tmp_path / 'schema.sqlite3'}")
    await asyncio.to_thread(database.ensure_schema, db)
    engine = db.engine()
    try:
        assert await database.schema_is_current(engine)
        async with engine.connect() as connection:
            diff = await connection.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    finally:
        await engine.dispose()
    assert diff == []


def test_telephony_serve_migrates_at_start_and_starts_anyway_when_the_database_is_down(tmp_path, caplog):
    fresh = database.database_for(f"sqlite:///{tmp_path / 'new' / 'calls.sqlite3'}")
    assert database.migrate_at_start(fresh) and database.migrate_at_start(fresh)  # made, then current
    port = __import__("helpers").free_port()  # nothing listens there
    down = database.database_for(f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/d")
    with caplog.at_level(logging.WARNING, "telephony.history"):
        assert database.migrate_at_start(down, timeout_s=5) is False
    # other tests' apps may still be migrating in their daemon threads: only this database's lines
    (line,) = [r.getMessage() for r in caplog.records if f":{port}/" in r.getMessage()]
    assert f"PostgreSQL 127.0.0.1:{port}/d" in line and "calls go on" in line and PASSWORD not in line
