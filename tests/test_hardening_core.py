"""Issue 18: logs a peer cannot forge or flood, tool calls at DEBUG, barge-in over several items,
a second Ctrl-C, the uvicorn floor, and a late answering-machine verdict."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import re
import signal
import socket
import time
import tomllib
from dataclasses import replace

import numpy as np
import pytest
import uvicorn
from conftest import ROOT, running_app
from helpers import simulated_call, stream_url, ulaw_silence, ulaw_tone

from telephony.core.actions import HangUp, Record, ToRealtime, ToTwilio
from telephony.core.barge_in import BargeInPolicy
from telephony.core.call import Call
from telephony.core.profile import load_profile
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.ops import logs
from telephony.serve.app import create_app
from telephony.serve.server import GracefulServer, uvicorn_options
from telephony.settings import Settings
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw


@pytest.fixture
def profile(profile):
    """The stop path, pinned: every caller sound stops the agent at once, as
    ``resume_false_interruptions = false`` does (tests/test_barge_in.py covers the pause)."""
    return replace(profile, barge_in=BargeInPolicy(resume_false_interruptions=False))


API_KEY = "sk-test-secret-key-123"


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False,
                    realtime_url=server.url, realtime_api_key=API_KEY, stream_secret="s" * 32, **overrides)


@contextlib.contextmanager
def app_logs(level: str = "INFO", fmt: str = "text"):
    """The root logger configured as `telephony serve` does, into a string; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        logs.configure(level, fmt, stream)
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


# --- 8. Log injection ---


async def test_peer_strings_cannot_forge_text_log_lines():
    forged = "CA" + "0" * 32 + "\n2026-01-01 00:00:00,000 INFO telephony.app: forged line"
    with app_logs() as out:
        async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
            # (On a valid URL, for a Twilio-shaped sid: the forged one comes in the start.)
            refused = TwilioCallSimulator(stream_url(app, host, "CA" + "0" * 32), call_sid=forged,
                                          custom_parameters=app.state.stream_tokens.with_token(
                                              {"call_sid": forged}, time.time()), caller_audio=ulaw_silence(0.2))
            await refused.run()
            sim = simulated_call(app, host, caller_audio=ulaw_tone(440, 0.6), extra_messages=[
                (0.1, '{"event": "wiggle",\r\n"INFO forged": 1}'),  # JSON whitespace may be a newline
                (0.2, json.dumps({"event": "mark", "streamSid": "MZ", "mark": {"name": "x\nINFO forged"}}))])
            await sim.run()
    lines = out.getvalue().splitlines()
    assert all(LINE_START.match(line) for line in lines), [line for line in lines if not LINE_START.match(line)]
    assert any("stream refused" in line and "\\x0a2026-01-01" in line for line in lines)
    assert any("Twilio event ignored" in line and '"wiggle",\\x0d\\x0a"INFO' in line for line in lines)


# --- 9. Log flooding ---


async def test_a_flood_of_bad_frames_logs_a_few_lines_then_counts():
    bad = [(0.05 + i * 0.0001, "not json") for i in range(2000)]
    with app_logs() as out:
        async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
            result = await simulated_call(app, host, caller_audio=ulaw_silence(0.6), extra_messages=bad).run()
    text = out.getvalue()
    flood = [line for line in text.splitlines() if "bad Twilio message: not JSON" in line]
    assert result.close_code in (None, 1000)
    assert len(flood) == 5 + 3  # the first five, then the 10th, 100th and 1000th
    assert "warning 1000 of its kind this call" in flood[-1]
    summary = [line for line in text.splitlines() if "were not logged for this call" in line]
    assert len(summary) == 1 and summary[0].split(" WARNING telephony.bridge: ")[1].startswith("1992 warning(s)")


# --- 13. A tool call at LOG_LEVEL=DEBUG ---


async def test_a_tool_call_at_debug_keeps_the_realtime_session():
    script = Script(response_ms=300, tool_calls={0: ("end_call", "{\"reason\": \"done\"}")}, respond_to_turns=False)
    with app_logs("DEBUG", "json") as out:
        async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
            await simulated_call(app, host, caller_audio=ulaw_silence(2.0)).run()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "Attempt to overwrite" not in out.getvalue()
    assert len(server.connections) == 1  # no reconnect
    (tool,) = [r for r in records if r.get("event") == "tool_call"]
    assert tool["data_name"] == "end_call"
    assert not [r for r in records if r.get("event") == "realtime_dropped"]


# --- 14. Barge-in over several queued items ---


def pcm_ms(ms: int) -> str:
    t = np.arange(ms * 24) / 24000
    return base64.b64encode((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()).decode()


def speak(call: Call, response: str, item: str, words: list[str], now: float) -> list[str]:
    """A response of one item, 100 ms of audio per word, sent in full (queued at Twilio); its marks."""
    call.on_realtime(rt.ResponseCreated(response), now)
    marks = []
    for word in words:
        call.on_realtime(rt.TranscriptDelta(response, item, word), now)
        actions = call.on_realtime(rt.AudioDelta(response, item, pcm_ms(100)), now)
        marks += [a.message.name for a in actions if isinstance(a, ToTwilio) and isinstance(a.message, tw.SendMark)]
    call.on_realtime(rt.AudioDone(response, item), now)
    call.on_realtime(rt.TranscriptDone(response, item, "".join(words)), now)
    call.on_realtime(rt.ResponseDone(response, "completed"), now)
    return marks


def test_barge_in_truncates_every_item_with_unheard_audio_in_play_order(profile):
    call = Call(profile, "pcm16")
    call.on_twilio(tw.Start("MZ1", "CA" + "1" * 32), 0.0)
    call.on_realtime_open(0.0)
    marks = speak(call, "r1", "A1", ["one ", "two ", "three ", "four "], 0.0)  # plays from 0.0 to 0.4
    speak(call, "r2", "B1", ["five ", "six "], 0.01)  # queued behind it, not begun
    call.on_twilio(tw.Mark(marks[0]), 0.1)  # Twilio played A1's first 200 ms
    call.on_twilio(tw.Mark(marks[1]), 0.2)
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 0.25)
    # B1 was heard not at all: deleted, since the server refuses to truncate unplayed audio.
    cuts = [a.command for a in actions if isinstance(a, ToRealtime)
            and isinstance(a.command, (rt.TruncateItem, rt.DeleteItem))]
    assert cuts == [rt.TruncateItem("A1", 250), rt.DeleteItem("B1")]
    transcripts = [a.data for a in actions if isinstance(a, Record) and a.kind == "transcript"]
    assert [(t["item_id"], t["text"], t["interrupted"], t["heard_ms"]) for t in transcripts] == [
        ("A1", "one two ", True, 250), ("B1", "", True, 0)]
    # A reconnect restores what the caller heard: A1 cut short, B1 not at all.
    call.on_realtime_closed("dropped")
    restored = [a.command for a in call.on_realtime_open(1.0) if isinstance(a, ToRealtime)]
    assert [c.text for c in restored if isinstance(c, rt.AddAssistantText)] == ["one two "]


# --- 15. A second Ctrl-C ---


async def test_a_second_ctrl_c_cuts_the_drain_short():
    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server:
        settings = settings_for(server, shutdown_grace_seconds=30)
        app = create_app(settings, load_profile(ROOT / "config" / "agent.toml"))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
        graceful = GracefulServer(uvicorn.Config(app, log_level="warning", lifespan="off",
                                                 **uvicorn_options(settings)), app.state.calls, 30)
        serving = asyncio.create_task(graceful.serve(sockets=[sock]))
        while not graceful.started:
            await asyncio.sleep(0.01)
        call = asyncio.create_task(simulated_call(app, host, caller_audio=ulaw_silence(20.0)).run())
        while not app.state.active_calls:
            await asyncio.sleep(0.01)
        graceful.handle_exit(signal.SIGINT, None)  # first: drain (up to 30 s)
        await asyncio.sleep(0.5)
        assert not serving.done()  # draining: the call goes on
        second = time.monotonic()
        graceful.handle_exit(signal.SIGINT, None)  # second: now
        graceful._captured_signals.clear()  # uvicorn re-raises them at exit: this process is pytest
        await asyncio.wait_for(serving, 5.0)
        took = time.monotonic() - second
        result = await asyncio.wait_for(call, 5.0)
        sock.close()
    assert took < 2.0
    assert result.close_code is not None


# --- 16. The uvicorn the direct lane needs ---


def test_pyproject_requires_the_uvicorn_the_direct_lane_runs_on():
    from telephony.serve.direct_lane import UVICORN_FLOOR

    requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (uvicorn_requirement,) = [r for r in requirements if re.match(r"uvicorn\b", r)]
    floor = re.search(r">=\s*([\d.]+)", uvicorn_requirement).group(1)
    assert tuple(int(part) for part in floor.split(".")) >= UVICORN_FLOOR


# --- 17. A late answering-machine verdict ---


def test_an_answering_machine_verdict_after_the_call_ended_starts_nothing(profile):
    call = Call(profile, "pcm16")
    call.on_twilio(tw.Start("MZ1", "CA" + "1" * 32), 0.0)
    call.on_realtime_open(0.0)
    call.end("the service is shutting down")
    assert call.on_answered_by("fax", 1.0) == []
    assert call.on_answered_by("machine_end_beep", 1.0) == []
    assert not any(isinstance(a, HangUp) for a in call.on_answered_by("fax", 1.0))
