"""``telephony demo`` and ``telephony simulate`` as a user runs them: subprocesses, real sockets,
and the verdict taken from the recorded WAV, not from logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import wave

import numpy as np
import pytest
from conftest import ROOT, running_app
from helpers import free_port

from telephony.offline.dial import parse_twiml, webhook_url
from telephony.offline.wavfile import read_call, read_pcm8k
from telephony.settings import Settings

FRAME = 160  # 20 ms at 8 kHz


def loud_frames(x: np.ndarray, threshold: float = 300.0) -> np.ndarray:
    frames = x[: len(x) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    return np.sqrt((frames ** 2).mean(axis=1)) >= threshold


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("voice", ["auto", "synth"])  # auto: espeak-ng when installed
def test_demo_interrupts_the_greeting_and_gets_an_answer(tmp_path, voice):
    out = tmp_path / "demo-call.wav"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "telephony", "demo", "--output", str(out), "--voice", voice],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=90)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert took < 60, took
    assert "barge-in" in proc.stdout and "truncate" in proc.stdout

    caller, agent, rate = read_call(out)
    assert rate == 8000
    c, a = loud_frames(caller), loud_frames(agent)
    onset = int(np.argmax(c))  # the caller's first word
    assert a[max(0, onset - 15):onset].any(), "the agent was not talking when the caller cut in"
    stop_frames = 300 // 20
    # From 300 ms after the caller cut in until the caller's turn could possibly end (it speaks
    # for over 4 s; the VAD waits 500 ms of silence), the agent's channel is silent.
    assert not a[onset + stop_frames:onset + 100].any(), np.flatnonzero(a[onset:onset + 100])[-3:] * 20
    last_caller = len(c) - int(np.argmax(c[::-1]))
    assert a[last_caller:].sum() * 20 > 1000, "the agent did not answer after the caller finished"


def test_demo_with_a_tool_calls_it_and_reads_out_its_answer(tmp_path):
    """The local engine's persona calls a Python tool on its cue; the bridge runs it and the agent
    answers with what it returned: a tool end to end, offline."""
    proc = subprocess.run([sys.executable, "-m", "telephony", "demo", "--tool", "--voice", "synth",
                           "--output", str(tmp_path / "demo-call.wav")],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert '"One moment, let me look that up."' in out
    assert 'tool output to the model: {"order":"A-17","status":"shipped","arrives":"Tuesday"}' in out
    assert out.index("tool output") < out.index('"Here is what I found: order A-17')


def test_demo_speaks_live_with_no_truncate(tmp_path):
    out = tmp_path / "demo-live.wav"
    proc = subprocess.run([sys.executable, "-m", "telephony", "demo", "--output", str(out), "--voice", "synth",
                           "--dialect", "live"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "live dialect" in proc.stdout and "BARGE-IN" in proc.stdout and "truncate" not in proc.stdout
    caller, agent, rate = read_call(out)
    c, a = loud_frames(caller), loud_frames(agent)
    onset = int(np.argmax(c))
    assert a[max(0, onset - 15):onset].any(), "the agent was not talking when the caller cut in"
    assert not a[onset + 300 // 20:onset + 100].any()  # silent from 300 ms after the cut-in
    last_caller = len(c) - int(np.argmax(c[::-1]))
    assert a[last_caller:].sum() * 20 > 1000, "the agent did not answer after the caller finished"


async def test_simulate_cli_records_a_stereo_call_from_any_wav(tmp_path):
    # A 16 kHz stereo WAV: the CLI must convert it to the 8 kHz mono μ-law of a phone line.
    rate = 16000
    t = np.arange(int(rate * 1.5)) / rate
    voice = np.where((t > 0.5) & (t < 1.1), 7000 * np.sin(2 * np.pi * 400 * t), 0)
    played = tmp_path / "caller.wav"
    with wave.open(str(played), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(voice, 2).astype("<i2").tobytes())
    record = tmp_path / "call.wav"
    async with running_app(Settings(twilio_validate_signatures=False, realtime_url="local")) as (app, host):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony", "simulate", "--url", f"ws://{host}/twilio/media-stream",
            "--play", str(played), "--record", str(record), "--listen", "6", "--hang-up-after", "0.5",
            cwd=ROOT, env=env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert "parameters {'call_sid': 'CA" in stdout.decode()  # the <Parameter>s came from the TwiML
    caller, agent, rate = read_call(record)
    assert rate == 8000
    c, a = loud_frames(caller), loud_frames(agent)
    assert 24 <= int(np.argmax(c)) <= 26  # the caller's tone starts at 0.5 s, on the call's clock
    assert a[:20].any()  # the greeting started at once
    assert not a[int(np.argmax(c)) + 15:int(np.argmax(c)) + 40].any()  # and was cut off
    assert a[60:].sum() > 25  # the answer after the turn


def test_webhook_url_and_twiml_parsing():
    assert webhook_url("ws://127.0.0.1:8000/twilio/media-stream") == "http://127.0.0.1:8000/twilio/voice"
    assert webhook_url("wss://bridge.example.com/twilio/media-stream") == "https://bridge.example.com/twilio/voice"
    twiml = parse_twiml('<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
                        '<Stream url="wss://h/twilio/media-stream"><Parameter name="from" value="+1555" />'
                        '</Stream></Connect><Say>Sorry</Say><Hangup /></Response>')
    assert twiml.url == "wss://h/twilio/media-stream" and twiml.parameters == {"from": "+1555"}


def test_any_wav_width_reads_as_8khz_mono(tmp_path):
    for width in (1, 2, 3, 4):
        path = tmp_path / f"w{width}.wav"
        t = np.arange(22050) / 22050
        x = 0.5 * np.sin(2 * np.pi * 300 * t)
        if width == 1:
            raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()
        elif width == 3:
            v = np.round(x * 2 ** 23).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
            raw = v.tobytes()
        else:
            raw = np.round(x * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(width)
            w.setframerate(22050)
            w.writeframes(raw)
        pcm = read_pcm8k(path)
        assert abs(len(pcm) - 8000) <= 1
        assert np.sqrt(np.mean(pcm[100:-100].astype(float) ** 2)) == \
            pytest.approx(16384 / 2 ** 0.5, rel=0.03), width


async def test_simulate_sip_plays_openais_side_of_a_sip_call(tmp_path):
    """`telephony simulate --sip` rings the running service with a signed webhook, answers with
    the local engine once accepted, and records the call: greeting, then an answer to the caller."""

    from telephony.offline.openai_sip_peer import new_webhook_secret

    peer_port = free_port()  # OpenAI's side: the service must know its port first
    secret, key = new_webhook_secret(), "sk-sim-sip"
    rate = 8000
    t = np.arange(int(rate * 4.0)) / rate
    voice = np.where((t > 2.5) & (t < 3.3), 7000 * np.sin(2 * np.pi * 400 * t), 0)
    played = tmp_path / "caller.wav"
    with wave.open(str(played), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(voice.astype("<i2").tobytes())
    record = tmp_path / "sip-call.wav"
    settings = Settings(openai_webhook_secret=secret, openai_api_key=key, twilio_validate_signatures=False,
                        openai_base_url=f"http://127.0.0.1:{peer_port}/v1")
    async with running_app(settings) as (app, host):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony", "simulate", "--sip", "--url", f"http://{host}/openai/sip",
            "--play", str(played), "--record", str(record), "--listen", "4", "--voice", "synth",
            "--peer-port", str(peer_port), cwd=ROOT,
            env={**env(), "OPENAI_WEBHOOK_SECRET": secret, "OPENAI_API_KEY": key},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    out = stdout.decode()
    assert proc.returncode == 0, stderr.decode() + out
    assert "HTTP 200" in out and "accepted: model gpt-realtime" in out and "response.create" in out
    caller, agent, rate = read_call(record)
    assert rate == 8000
    c, a = loud_frames(caller), loud_frames(agent)
    onset = int(np.argmax(c))
    assert 120 <= onset <= 130  # the caller's tone at 2.5 s, on the line's clock
    assert a[:onset].any()  # the greeting played before the caller spoke
    last_caller = len(c) - int(np.argmax(c[::-1]))
    assert a[last_caller:].sum() * 20 > 500, "the agent did not answer after the caller finished"
