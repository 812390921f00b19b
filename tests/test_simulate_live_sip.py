"""``telephony simulate --sip --engine live``: a GPT-Live call over OpenAI's SIP route, offline, with
the local engine serving the session. The real service under uvicorn, OpenAI's Live side on
loopback; verdicts from the stereo recording (measured), the service's call record and what
crossed the sideband, which the openai package's Live models check message by message."""

from __future__ import annotations

import asyncio
import audioop  # audioop-lts on Python 3.13
import base64
import json
import re
import sys
import wave

import numpy as np
import pytest
from conftest import ROOT, running_app
from helpers import free_port
from test_demo_and_simulate import env

from telephony.offline.live_sip_peer import SERVER_EVENTS
from telephony.offline.local_engine import EngineConfig, RealtimeEngine, SpeakingPersona, ToolCue, Utterance
from telephony.offline.local_live_sip import LocalLiveSipPeer, start_session
from telephony.offline.openai_side import new_webhook_secret
from telephony.offline.voices import make_voice
from telephony.offline.wavfile import read_call
from telephony.ops.records import read_records, record_path
from telephony.settings import Settings

FRAME = 160  # 20 ms at 8 kHz
RATE = 8000
SIP_HEADERS = [{"name": "From", "value": "<sip:+15550100001@pstn.example.com>;tag=t"},
               {"name": "To", "value": "<sip:+15550100002@sip.api.openai.com>"}]
TONE = (4.0, 4.8)  # the caller "speaks" (a 400 Hz tone) once the greeting is over


def caller_pcm(seconds: float = 5.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return np.where((t > TONE[0]) & (t < TONE[1]), 7000 * np.sin(2 * np.pi * 400 * t), 0).astype("<i2")


def loud_frames(x: np.ndarray, threshold: float = 300.0) -> np.ndarray:
    frames = x[: len(x) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    return np.sqrt((frames ** 2).mean(axis=1)) >= threshold


def speech_like(x: np.ndarray) -> bool:
    """Voiced most of the time with pauses, its energy in the telephone band and spread over
    many frequencies (a voice's harmonics and formants), unlike a tone or noise."""
    loud = loud_frames(x)
    x = x.astype(np.float64)
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    band = power[(freqs >= 100) & (freqs <= 3500)].sum() / power.sum()
    bins = np.add.reduceat(power, np.arange(0, len(power), max(1, int(25 * len(x) / RATE))))  # 25 Hz bands
    top = np.sort(bins)[::-1]
    return bool(loud.mean() > 0.4 and (~loud).sum() >= 3 and band > 0.9 and top[0] / bins.sum() < 0.5
                and (top[:10].sum() / bins.sum()) < 0.95)


def transcripts(records: list[dict]) -> list[tuple[str, str]]:
    """(speaker, words) in the order the words were said (their start on the session clock)."""
    turns = sorted((r for r in records if r["kind"] == "transcript"), key=lambda r: r["start_ms"])
    return [(r["speaker"], r["text"]) for r in turns]


def caller_seconds(records: list[dict]) -> list[float]:
    """The placeholder recogniser's words ("[0.8 s of caller speech]"): how long it heard speech."""
    return [float(m.group(1)) for _, text in transcripts(records)
            if (m := re.fullmatch(r"\[(\d+\.\d) s of caller speech\]", text))]


async def test_simulate_sip_engine_live_is_a_live_call_served_by_the_local_engine(tmp_path, profile):
    peer_port = free_port()  # OpenAI's side: the service must know its port first
    secret, key = new_webhook_secret(), "sk-sim-live"
    played, record = tmp_path / "caller.wav", tmp_path / "live-call.wav"
    with wave.open(str(played), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(caller_pcm().tobytes())
    settings = Settings(openai_webhook_secret=secret, openai_api_key=key, twilio_validate_signatures=False,
                        openai_base_url=f"http://127.0.0.1:{peer_port}/v1", call_records_dir=tmp_path)
    async with running_app(settings, profile) as (app, host):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony", "simulate", "--sip", "--engine", "live",
            "--url", f"http://{host}/openai/sip", "--play", str(played), "--record", str(record),
            "--listen", "2", "--voice", "synth", "--peer-port", str(peer_port), "--dtmf", "5.2:7", cwd=ROOT,
            env={**env(), "OPENAI_WEBHOOK_SECRET": secret, "OPENAI_API_KEY": key},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        for _ in range(100):  # the service ends its side once session.closed arrives
            if not app.state.calls._calls:
                break
            await asyncio.sleep(0.05)
    out = stdout.decode()
    assert proc.returncode == 0, stderr.decode() + out
    # Rung as a Live call and accepted through the Live API, once; no message the package refuses.
    assert re.search(r"webhook live\.transport\.incoming live_\w+: HTTP 200", out), out
    assert "accepted (Live): model gpt-live-1" in out and "REST: {'accept': 1}" in out, out
    assert "refuse" not in stderr.decode()
    (session_id,) = re.findall(r"live\.transport\.incoming (live_\w+)", out)

    caller, agent, rate = read_call(record)
    assert rate == RATE and len(caller) == len(agent)
    c, a = loud_frames(caller), loud_frames(agent)
    onset = int(np.argmax(c))
    assert abs(onset - TONE[0] * 50) <= 2  # the caller's tone on the line's clock (50 frames a second)
    # The agent greeted first: its voice starts soon after the accept, before the caller says anything.
    greeting_at = int(np.argmax(a))
    assert a.any() and greeting_at < 50 and greeting_at < onset
    assert speech_like(agent[greeting_at * FRAME: onset * FRAME]), "the greeting is not speech-like"
    # Then it answers the caller, after they stop.
    last_caller = len(c) - int(np.argmax(c[::-1]))
    assert a[last_caller:].sum() * 20 > 500, "the agent did not answer after the caller finished"

    records = read_records(record_path(tmp_path, session_id))
    said = transcripts(records)
    assert said[0][0] == "agent" and said[0][1].startswith("Hello! Thanks for calling")  # the profile's greeting
    heard = caller_seconds(records)  # the caller's turn: the tone, and the quiet that ended it
    assert len(heard) == 1 and TONE[1] - TONE[0] <= heard[0] <= TONE[1] - TONE[0] + 0.7, said
    assert [r["digits"] for r in records if r["kind"] == "dtmf"] == ["7"]  # --dtmf: transport.dtmf.received
    end = [r for r in records if r["kind"] == "end"][0]
    assert end["reason"] == "session closed: remote_hangup" and end["abnormal"] is False
    assert "ended: session.closed remote_hangup" in out  # the caller hung up after --listen


class GoodbyePersona(SpeakingPersona):
    """Answers the caller's first turn with a goodbye and end_call; after the tool, one short word."""

    def after_tool(self, output: str) -> Utterance:
        return Utterance("Bye.", self.voice.speak("Bye."))


async def test_a_delegated_end_call_and_a_key_hang_up_once_the_goodbye_was_heard(tmp_path, profile):
    persona = GoodbyePersona(make_voice("synth"), ToolCue(1, "end_call", '{"reason": "the caller is done"}',
                                                          "Goodbye, thanks for calling."))
    ulaw = audioop.lin2ulaw(caller_pcm().tobytes(), 2)
    async with LocalLiveSipPeer(persona, caller_audio=ulaw, dtmf=((TONE[1] + 0.2, "5"),), listen_s=12) as peer, \
            running_app(Settings(openai_webhook_secret=peer.secret, openai_base_url=peer.base_url,
                                 openai_api_key=peer.api_key, twilio_validate_signatures=False,
                                 call_records_dir=tmp_path), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await asyncio.wait_for(s.ended.wait(), 30)

    assert s.webhook_statuses == [200] and s.accepts == 1
    assert [verb for verb, _ in peer.requests] == ["accept", "hangup"]
    assert s.invalid == [] and s.unsent == []  # both ways, the package's Live models' shapes
    assert all(not SERVER_EVENTS.validate_python(e).model_extra or e["type"] == "response.event" for e in s.sent)
    kinds = [e["type"] for e in s.sent]
    assert kinds[0] == "session.started" and kinds[-1] == "session.closed"
    assert s.received[0]["type"] == "session.instructions.append"  # the greeting, first
    assert profile.greeting in s.received[0]["content"]
    (digit,) = [e for e in s.sent if e["type"] == "transport.dtmf.received"]
    assert digit["event"] == "5"
    assert any("5" in e.get("content", "") for e in s.of_type("session.instructions.append")[1:])
    (call,) = [e["event"]["item"] for e in s.sent if e["type"] == "response.event"]
    assert call["name"] == "end_call"
    (output,) = s.of_type("response.item.create")
    assert output["item"]["call_id"] == call["call_id"] and json.loads(output["item"]["output"])["ok"] is True

    # What was reflected is what the caller heard: the agent's loud frames lie in the reflected
    # ranges (session ms = recording ms: both start at the accept), and the ranges hold sound.
    reflected = [(e["start_ms"], e["end_ms"]) for e in s.sent if e["type"] == "session.output_audio.delta"]
    assert reflected and all(a < b for a, b in reflected)
    assert all(b0 >= a1 for (_, a1), (b0, _) in zip(reflected, reflected[1:]))  # in order, no overlap
    agent = np.frombuffer(audioop.ulaw2lin(bytes(s.agent), 2), "<i2")
    loud = np.flatnonzero(loud_frames(agent)) * 20
    covered = np.zeros(len(loud), bool)
    for a0, a1 in reflected:
        covered |= (loud >= a0) & (loud < a1)
    assert covered.all()
    pcm = np.frombuffer(base64.b64decode(next(e["delta"] for e in s.sent if e["type"] == "session.output_audio.delta")),
                        "<i2")
    assert len(pcm) == 2400  # 100 ms of PCM16 at 24 kHz, as the sideband reflects it

    # Hung up by the service once the last reflected audio had played: not before, and soon after.
    last_end = max(b for _, b in reflected)
    assert s.end_reason == "close_requested" and s.hung_up_ms is not None
    assert last_end <= s.hung_up_ms <= last_end + 2500
    assert len(s.agent) / RATE * 1000 == len(s.caller) / RATE * 1000 < 12000  # the line stopped with the call
    records = read_records(record_path(tmp_path, s.session_id))
    said = transcripts(records)
    assert any(who == "agent" and text.startswith("Goodbye, thanks for calling.") for who, text in said)
    assert caller_seconds(records)
    assert any(r["kind"] == "dtmf" and r["digits"] == "5" for r in records)
    assert [r["name"] for r in records if r["kind"] == "tool_call"] == ["end_call"]
    (after,) = [r for r in records if r["kind"] == "after_playout"]  # the service's hang-up, not a timeout
    assert after["action"] == "HangUp" and after["timed_out"] is False
    end = [r for r in records if r["kind"] == "end"][0]  # OpenAI closes the session as it hangs up
    assert end["reason"] == "session closed: close_requested" and end["abnormal"] is False


async def test_the_caller_talking_over_the_greeting_stops_it_on_the_line(tmp_path, profile):
    """Live decides interruptions itself (``LIVE_INTERRUPT_MS`` into the caller's speech): the line
    stops playing then, queued audio and all, and the service's transcript keeps what was heard."""
    t = np.arange(int(RATE * 3.0)) / RATE
    tone = np.where((t > 1.0) & (t < 2.0), 7000 * np.sin(2 * np.pi * 400 * t), 0).astype("<i2")
    persona = SpeakingPersona(make_voice("synth"))
    async with LocalLiveSipPeer(persona, caller_audio=audioop.lin2ulaw(tone.tobytes(), 2), listen_s=0.5) as peer, \
            running_app(Settings(openai_webhook_secret=peer.secret, openai_base_url=peer.base_url,
                                 openai_api_key=peer.api_key, twilio_validate_signatures=False,
                                 call_records_dir=tmp_path), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await asyncio.wait_for(s.ended.wait(), 30)
    assert s.invalid == [] and s.unsent == [] and s.end_reason == "remote_hangup"
    c = loud_frames(np.frombuffer(audioop.ulaw2lin(bytes(s.caller), 2), "<i2"))
    a = loud_frames(np.frombuffer(audioop.ulaw2lin(bytes(s.agent), 2), "<i2"))
    onset, stop = int(np.argmax(c)), len(c) - int(np.argmax(c[::-1]))
    assert a[onset - 25:onset].any()  # the greeting was playing when the caller began
    assert not a[onset + 10:stop].any()  # and stopped 200 ms in, for as long as the caller spoke
    records = read_records(record_path(tmp_path, s.session_id))
    greeting = transcripts(records)[0]
    assert greeting[0] == "agent" and profile.greeting.startswith(greeting[1]) and greeting[1] != profile.greeting


def live_engine(**config) -> RealtimeEngine:
    engine = RealtimeEngine(SpeakingPersona(make_voice("synth")), EngineConfig(dialect="live", **config), "live_1")
    accepted = {"type": "live", "model": "gpt-live-1", "instructions": "Be brief.",
                "audio": {"output": {"voice": "marin"}}}
    (started,) = engine.receive(json.dumps({"type": "session.start", "session": start_session(accepted)}), 0.0)
    assert SERVER_EVENTS.validate_python(started).session.audio.format.type == "audio/pcmu"
    return engine


@pytest.mark.parametrize("speaks", [True, False])
def test_the_engine_speaks_on_instructions_only_when_asked(speaks):
    """The SIP greeting recipe (session.instructions.append) makes the Live engine speak when the
    SIP side asks for it; on the primary socket instructions only add context."""
    engine = live_engine(speak_on_instructions=speaks)
    greet = {"type": "session.instructions.append", "delegation_id": None,
             "content": "Greet the caller by saying exactly this, then wait for them: Hi there."}
    (appended,) = engine.receive(json.dumps(greet), 0.0)
    assert appended["type"] == "session.instructions.appended"
    audio = [e for e in engine.advance(60.0) if e["type"] == "session.output_audio.delta"]
    assert bool(audio) is speaks
    if speaks:
        pcm = np.frombuffer(audioop.ulaw2lin(b"".join(base64.b64decode(e["delta"]) for e in audio), 2), "<i2")
        assert speech_like(pcm)  # μ-law 8 kHz: the format SIP negotiated


def test_the_engine_takes_tools_found_after_the_accept():
    engine = live_engine()
    tools = [{"type": "function", "name": "lookup", "description": "", "parameters": {"type": "object"}}]
    delegation = {"type": "responses", "responses": {"model": "gpt-5-mini", "tools": tools}}
    (updated,) = engine.receive(json.dumps({"type": "session.update", "session": {"delegation": delegation}}), 1.0)
    assert SERVER_EVENTS.validate_python(updated).type == "session.updated"
    assert updated["session"]["delegation"] == delegation and engine.session["tools"] == tools
