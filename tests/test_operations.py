"""Operating it: metrics, call records and structured logs after real simulated calls."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import httpx
import pytest
from conftest import running_app
from helpers import simulated_call, ulaw_silence, ulaw_tone
from prometheus_client.parser import text_string_to_metric_families

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.ops import logs
from telephony.ops.records import read_records, record_path
from telephony.settings import Settings

API_KEY = "sk-ops-secret-777"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@contextlib.contextmanager
def captured_json_logs(secrets: list[str] = ()):
    """The root logger configured as the app does (JSON), into a string; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        logs.configure("INFO", "json", stream, secrets=secrets)
        yield stream
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


@pytest.fixture
def json_logs():
    with captured_json_logs() as stream:
        yield stream


async def barge_in_call(tmp_path, codec="pcm16"):
    script = Script(response_ms=3000, speed=2.0)
    caller = ulaw_silence(1.0) + ulaw_tone(500, 0.6) + ulaw_silence(2.0)
    settings = Settings(twilio_validate_signatures=False,
                        realtime_api_key=API_KEY, audio_codec=codec, call_records_dir=tmp_path / "records")
    async with ScriptedRealtimeServer(script) as server:
        settings = settings.model_copy(update={"realtime_url": server.url})
        async with running_app(settings) as (app, host):
            sim = simulated_call(app, host, caller_audio=caller, parameters={"from": "+15551230000"})
            result = await sim.run()
            async with httpx.AsyncClient() as client:
                for _ in range(100):  # the bridge finishes its teardown just after the caller's stop
                    r = await client.get(f"http://{host}/metrics")
                    if "telephony_active_calls 0.0" in r.text:
                        break
    return sim, result, r


async def test_metrics_records_and_json_logs_after_a_barge_in_call(tmp_path, json_logs):
    sim, result, r = await barge_in_call(tmp_path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    assert m[("telephony_active_calls", ())] == 0
    assert m[("telephony_calls_total", (("outcome", "normal"),))] == 1
    assert m[("telephony_barge_ins_total", ())] == 1  # the caller spoke once, over the greeting
    assert m[("telephony_frames_received_total", (("peer", "twilio"),))] >= 150
    assert m[("telephony_frames_sent_total", (("peer", "realtime"),))] >= 150
    assert m[("telephony_frames_sent_total", (("peer", "twilio"),))] >= 10
    for direction in ("to_twilio", "to_realtime"):
        assert m[("telephony_bridge_added_latency_seconds_count", (("direction", direction),))] >= 10
    assert m[("telephony_barge_in_latency_seconds_count", ())] == len(result.clears) == 1
    assert m[("telephony_response_latency_seconds_count", ())] >= 1  # the reply after the caller's turn
    assert API_KEY not in r.text

    # The call record: one JSON line per fact, named after the call.
    entries = read_records(record_path(tmp_path / "records", sim.call_sid))
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "start" and entries[0]["call_sid"] == sim.call_sid
    assert entries[0]["parameters"] == {"call_sid": sim.call_sid, "from": "+15551230000"}  # no token
    assert kinds[-2:] == ["end", "summary"] and entries[-1]["outcome"] == "normal"
    (barge,) = [e for e in entries if e["kind"] == "barge_in"]
    # The greeting played from ~0 s (later on a loaded machine: its first audio is late) to the
    # caller's interruption at 1.0 s.
    assert 700 <= barge["heard_ms"] <= 1200
    assert "clear_sent" in kinds and "response_latency" in kinds
    usages = [e["usage"] for e in entries if e["kind"] == "response_done" and e.get("usage")]
    assert usages and all(u["total_tokens"] == u["input_tokens"] + u["output_tokens"] > 0 for u in usages)
    turns = [e for e in entries if e["kind"] == "transcript"]
    assert any(t["speaker"] == "caller" and t["text"] for t in turns)
    assert any(t["speaker"] == "agent" and t.get("interrupted") and t["heard_ms"] > 0 for t in turns)
    assert entries[-1]["added_latency"]["to_realtime"]["count"] >= 150

    # Logs: every line is JSON; the call's lines carry both its ids, never the key.
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    events = {line.get("event"): line for line in lines if line["logger"] == "telephony.call_events"}
    assert {"start", "barge_in", "end"} <= set(events)
    for line in events.values():
        assert line["call_sid"] == sim.call_sid and line["stream_sid"] == sim.stream_sid
    assert API_KEY not in json_logs.getvalue()
    assert "+15551230000" not in json_logs.getvalue()


async def test_no_call_records_when_the_directory_is_unset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory would land here
    settings = Settings(twilio_validate_signatures=False, realtime_api_key=API_KEY)
    assert settings.call_records_dir is None
    async with ScriptedRealtimeServer() as server:
        settings = Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key=API_KEY)
        async with running_app(settings) as (app, host):
            await simulated_call(app, host, caller_audio=ulaw_silence(0.3)).run()
    assert not list(tmp_path.iterdir())


def test_text_logs_carry_the_call_ids():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    handler.addFilter(logs.CallContextFilter())
    logger = logging.getLogger("telephony.test_text_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        ids = logs.bind_call()
        ids.update(call_sid="CA1", stream_sid="MZ1")
        logger.warning("hello")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().rstrip().endswith("hello [call_sid=CA1 stream_sid=MZ1]")


def test_record_path_stays_inside_the_directory(tmp_path):
    assert record_path(tmp_path, "../../etc/passwd").parent == tmp_path
    assert record_path(tmp_path, "CA123").name == "CA123.jsonl"


def test_operations_settings_from_env(tmp_path):
    s = Settings.from_env({"LOG_FORMAT": "JSON", "WEB_CONCURRENCY": "3", "CALL_RECORDS_DIR": str(tmp_path),
                           "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "tok-secret"})
    assert (s.log_format, s.web_concurrency, s.call_records_dir) == ("json", 3, tmp_path)
    assert "tok-secret" not in repr(s) and "tok-secret" in s.secrets()
    for env in ({"WEB_CONCURRENCY": "0"}, {"LOG_FORMAT": "xml"}):
        with pytest.raises(ValueError):
            Settings.from_env(env)


async def test_metrics_token_guards_metrics():
    async with ScriptedRealtimeServer() as server:
        settings = Settings(twilio_validate_signatures=False,
                            realtime_url=server.url, realtime_api_key=API_KEY, metrics_token="m-token-1")
        async with running_app(settings) as (app, host), httpx.AsyncClient() as client:
            assert (await client.get(f"http://{host}/metrics")).status_code == 401
            wrong = await client.get(f"http://{host}/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await client.get(f"http://{host}/metrics", headers={"Authorization": "Bearer m-token-1"})
            assert ok.status_code == 200 and "telephony_active_calls" in ok.text
            assert (await client.get(f"http://{host}/healthz")).status_code == 200


async def test_status_callback_is_accepted():
    async with ScriptedRealtimeServer() as server:
        async with running_app(Settings(twilio_validate_signatures=False,
                                        realtime_url=server.url, realtime_api_key=API_KEY)) as (app, host):
            async with httpx.AsyncClient() as client:
                r = await client.post(f"http://{host}/twilio/status",
                                      data={"CallSid": "CA" + "1" * 32, "CallStatus": "completed",
                                            "CallDuration": "12"})
    assert r.status_code == 204


def test_configured_logs_mask_secrets_that_slip_into_a_message():
    with captured_json_logs(Settings(twilio_validate_signatures=False, realtime_api_key=API_KEY).secrets()) as stream:
        logging.getLogger("telephony.test").error("upstream said: bad key %s", API_KEY)
    line = json.loads(stream.getvalue())
    assert API_KEY not in stream.getvalue() and line["msg"] == "upstream said: bad key [redacted]"
