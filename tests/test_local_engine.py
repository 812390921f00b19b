"""The local Realtime engine: sans-I/O behaviour on a fake clock, and its websocket server
driven by the openai package's own realtime client."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import openai
import pytest
from helpers import validate_event

from telephony.offline.local_engine import EngineConfig, RealtimeEngine, SpeakingPersona
from telephony.offline.local_realtime import RealtimeServer
from telephony.offline.voices import EspeakVoice, FormantVoice, make_voice


def pcm_tone(seconds: float, amplitude: float = 6000.0, rate: int = 24000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()


def append(audio: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()})


class Driver:
    """Feeds an engine 20 ms frames on a fake clock; every event it emits is schema-checked."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.engine = RealtimeEngine(SpeakingPersona(FormantVoice()), config)
        self.now = 0.0
        self.events: list[dict] = []
        self._take(self.engine.open(self.now))

    def _take(self, events: list[dict]) -> list[dict]:
        for event in events:
            validate_event(event, "beta", "server")
        self.events += events
        return events

    def send(self, event: dict) -> list[dict]:
        return self._take(self.engine.receive(json.dumps(event), self.now))

    def talk(self, audio: bytes, frame: int = 960) -> list[dict]:
        out = []
        for i in range(0, len(audio), frame):
            self.now += 0.02
            out += self._take(self.engine.advance(self.now))
            out += self._take(self.engine.receive(append(audio[i:i + frame]), self.now))
        return out

    def run_until(self, t: float) -> list[dict]:
        self.now = t
        return self._take(self.engine.advance(t))


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_vad_turn_gets_an_automatic_spoken_answer():
    d = Driver()
    d.send({"type": "session.update", "session": {"input_audio_transcription": {"model": "whisper-1"},
                                                  "turn_detection": {"type": "server_vad",
                                                                     "silence_duration_ms": 400}}})
    out = d.talk(bytes(9600) + pcm_tone(0.6) + bytes(48000))
    started = next(e for e in out if e["type"] == "input_audio_buffer.speech_started")
    assert started["audio_start_ms"] == 200
    stopped = next(e for e in out if e["type"] == "input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"] and stopped["audio_end_ms"] == 200 + 600 + 400
    kinds = types(out)
    assert kinds.index("input_audio_buffer.committed") < kinds.index("response.created")
    assert "conversation.item.input_audio_transcription.completed" in kinds
    out += d.run_until(60.0)
    done = next(e for e in out if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    audio = b"".join(base64.b64decode(e["delta"]) for e in out if e["type"] == "response.audio.delta")
    assert len(audio) / 48 > 1000  # a sentence of speech-like audio, PCM16 24 kHz
    transcript = next(e for e in out if e["type"] == "response.audio_transcript.done")["transcript"]
    assert transcript in SpeakingPersona.replies


def test_vad_hysteresis_keeps_a_turn_through_soft_syllables():
    d = Driver(EngineConfig(vad_start_rms=1000, vad_stop_rms=300))
    soft = pcm_tone(0.6, amplitude=700)  # RMS ~495: below start, above stop
    out = d.talk(soft)
    assert "input_audio_buffer.speech_started" not in types(out)  # too soft to start a turn
    out = d.talk(pcm_tone(0.2) + soft + bytes(24000))
    assert types(out).count("input_audio_buffer.speech_started") == 1
    stopped = next(e for e in out if e["type"] == "input_audio_buffer.speech_stopped")
    assert stopped["audio_end_ms"] == 600 + 200 + 600 + 500  # ended only by real silence


def test_greeting_says_what_response_create_asks_for_and_cancel_stops_audio():
    d = Driver()
    d.send({"type": "response.create", "response": {
        "instructions": "Greet the caller by saying exactly this, then wait for them: Hello there, caller."}})
    out = d.run_until(0.25)  # chunk 100 ms at 2x: deltas at 0, 0.05, …, 0.25
    assert types(out).count("response.audio.delta") == 6
    cancel = d.send({"type": "response.cancel", "event_id": "evt_c1"})
    assert types(cancel) == ["response.output_item.done", "response.done"]
    assert cancel[-1]["response"]["status"] == "cancelled"
    assert cancel[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    assert "response.audio.delta" not in types(d.run_until(30.0))  # nothing more, ever
    again = d.send({"type": "response.cancel", "event_id": "evt_c2"})
    assert again[0]["error"]["code"] == "response_cancel_not_active"
    assert again[0]["error"]["event_id"] == "evt_c2"
    text = "".join(e["delta"] for e in d.events if e["type"] == "response.audio_transcript.delta")
    assert "Hello there, caller.".startswith(text) and text


def test_truncate_is_checked_against_the_audio_the_item_has():
    d = Driver()
    d.send({"type": "response.create"})
    d.run_until(0.1)  # three 100 ms deltas: the item has 300 ms of audio
    item = next(e["item_id"] for e in d.events if e["type"] == "response.audio.delta")
    too_far = d.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                      "audio_end_ms": 301, "event_id": "evt_t1"})
    assert too_far[0]["type"] == "error" and too_far[0]["error"]["event_id"] == "evt_t1"
    ok = d.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 300})
    assert ok[0] == {**ok[0], "type": "conversation.item.truncated", "item_id": item, "audio_end_ms": 300}
    missing = d.send({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
                      "audio_end_ms": 0})
    assert missing[0]["error"]["code"] == "item_not_found"
    # As the real service: nothing of it played, nothing to truncate (livekit/agents#6157); deleted.
    unplayed = d.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                       "audio_end_ms": 0})
    assert unplayed[0]["error"]["code"] == "unsupported_content_type"
    assert unplayed[0]["error"]["message"] == "Only model output audio messages can be truncated"
    deleted = d.send({"type": "conversation.item.delete", "item_id": item, "event_id": "evt_d1"})
    assert deleted[0] == {**deleted[0], "type": "conversation.item.deleted", "item_id": item}
    again = d.send({"type": "conversation.item.delete", "item_id": item})
    assert again[0]["error"]["code"] == "item_not_found"
    for event in unplayed + deleted:
        validate_event(event, "beta", "server")


def test_barge_in_cancels_the_response_and_ulaw_sessions_get_ulaw():
    d = Driver()
    d.send({"type": "session.update", "session": {"input_audio_format": "g711_ulaw",
                                                  "output_audio_format": "g711_ulaw"}})
    d.send({"type": "response.create"})
    out = d.run_until(0.2)
    delta = base64.b64decode(next(e for e in out if e["type"] == "response.audio.delta")["delta"])
    assert len(delta) == 800  # 100 ms of μ-law 8 kHz
    import audioop
    loud = audioop.lin2ulaw(pcm_tone(0.2, rate=8000), 2)
    out = d.talk(loud, frame=160)
    kinds = types(out)
    assert kinds[:3] == ["input_audio_buffer.speech_started", "response.output_item.done", "response.done"]
    assert out[2]["response"]["status_details"]["reason"] == "turn_detected"
    assert "response.audio.delta" not in kinds[1:]


def test_bad_client_events_get_errors_not_crashes():
    d = Driver()
    assert d.engine.receive("not json", 0)[0]["type"] == "error"
    assert d.send({"type": "no.such.event"})[0]["error"]["code"] == "invalid_value"
    d.send({"type": "response.create"})
    assert d.send({"type": "response.create"})[0]["error"]["code"] == "conversation_already_has_active_response"


def test_formant_voice_is_speech_like_and_follows_the_text():
    v = FormantVoice()
    short = np.frombuffer(v.speak("Hello."), "<i2")
    long = np.frombuffer(v.speak("Hello, thanks for calling. How can I help you today?"), "<i2")
    assert len(long) > 3 * len(short)
    frames = long[: len(long) // 480 * 480].reshape(-1, 480).astype(float)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    assert (rms > 300).mean() > 0.5 and (rms < 100).sum() >= 3  # voiced mostly, with pauses


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng is not installed")
def test_espeak_voice_renders_24khz_speech():
    pcm = np.frombuffer(EspeakVoice().speak("Testing one two three."), "<i2")
    assert 0.8 < len(pcm) / 24000 < 4.0 and np.abs(pcm).max() > 3000
    assert make_voice().name == "espeak-ng"


async def next_event_of(conn, kind: str, received: list[dict]) -> dict:
    """Reads an openai Realtime connection until an event of ``kind``, keeping all it read."""
    while True:
        event = json.loads(await conn.recv_bytes())
        received.append(event)
        if event["type"] == kind:
            return event


async def test_openai_realtime_client_completes_a_session_against_realtime_server():
    """The openai package's realtime client, offline: every server event is a valid
    ``RealtimeServerEvent`` (and carries no field the model does not know)."""
    received: list[dict] = []
    async with RealtimeServer(voice=FormantVoice()) as server:
        client = openai.AsyncOpenAI(api_key="sk-local-test", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
        async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:

            async def until(kind: str) -> dict:
                return await next_event_of(conn, kind, received)

            await until("session.created")
            await conn.session.update(session={"turn_detection": {"type": "server_vad",
                                                                  "silence_duration_ms": 300}})
            await until("session.updated")
            speech = pcm_tone(0.5) + bytes(48000 // 2)
            for i in range(0, len(speech), 960):
                await conn.input_audio_buffer.append(audio=base64.b64encode(speech[i:i + 960]).decode())
            first = await until("response.audio.delta")
            await conn.response.cancel()
            done = await until("response.done")
            assert done["response"]["status"] == "cancelled"
            await conn.conversation.item.truncate(item_id=first["item_id"], content_index=0, audio_end_ms=50)
            await until("conversation.item.truncated")
            await conn.response.create()
            done = await until("response.done")
            assert done["response"]["status"] == "completed"
    kinds = types(received)
    for expected in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "response.created", "response.output_item.added",
                     "response.audio.done", "response.audio_transcript.done"):
        assert expected in kinds
    for event in received:
        validate_event(event, "beta", "server")


def test_after_the_caller_has_spoken_a_response_create_answers_rather_than_greets():
    d = Driver()
    d.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "pressed 5"}]}})
    d.send({"type": "response.create"})
    out = d.run_until(60.0)
    transcript = next(e for e in out if e["type"] == "response.audio_transcript.done")["transcript"]
    assert transcript in SpeakingPersona.replies


def test_realtime_server_command_serves_the_beta_protocol():
    """``telephony realtime-server --port 0`` as a user starts it; a raw websockets client."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from websockets.sync.client import connect

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "telephony", "realtime-server", "--port", "0", "--voice", "synth"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "built-in formant synthesiser" in line, line
        url = line.split("listening on ")[1].strip()
        with connect(url + "?model=whatever",
                     additional_headers={"Authorization": "Bearer x", "OpenAI-Beta": "realtime=v1"}) as ws:
            created = json.loads(ws.recv(timeout=5))
            ws.send(json.dumps({"type": "response.create"}))
            events = [created]
            while events[-1]["type"] != "response.done":
                events.append(json.loads(ws.recv(timeout=10)))
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert created["type"] == "session.created" and events[-1]["response"]["status"] == "completed"
    for event in events:
        validate_event(event, "beta", "server")


def test_without_server_vad_the_client_commits_and_asks_for_the_answer():
    d = Driver()
    d.send({"type": "session.update", "session": {"turn_detection": None}})
    out = d.talk(pcm_tone(0.4) + bytes(24000))
    assert not [e for e in out if e["type"].startswith("input_audio_buffer.speech")]
    committed = d.send({"type": "input_audio_buffer.commit"})
    assert types(committed)[:2] == ["input_audio_buffer.committed", "conversation.item.created"]
    assert "response.created" not in types(committed)
    assert "response.created" in types(d.send({"type": "response.create"}))


async def test_realtime_server_speaks_ga_to_the_openai_ga_client():
    """No OpenAI-Beta header: the engine answers in the GA dialect, and every event it sends
    validates as the GA ``RealtimeServerEvent``."""
    received: list[dict] = []
    async with RealtimeServer(voice=FormantVoice()) as server:
        client = openai.AsyncOpenAI(api_key="sk-local-test", websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
        async with client.realtime.connect(model="gpt-realtime") as conn:

            async def until(kind: str) -> dict:
                return await next_event_of(conn, kind, received)

            created = await until("session.created")
            assert created["session"]["type"] == "realtime"
            await conn.session.update(session={"type": "realtime", "audio": {
                "input": {"format": {"type": "audio/pcmu"},
                          "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}},
                "output": {"format": {"type": "audio/pcmu"}}}})
            updated = await until("session.updated")
            assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
            await conn.response.create()
            first = await until("response.output_audio.delta")
            assert len(base64.b64decode(first["delta"])) == 800  # 100 ms of μ-law
            await until("response.done")
    for event in received:
        validate_event(event, "ga", "server")


async def test_browser_subprotocols_select_the_beta_dialect():
    import websockets

    async with RealtimeServer(voice=FormantVoice()) as server:
        async with websockets.connect(
                f"ws://127.0.0.1:{server.port}/v1/realtime?model=x",
                subprotocols=["realtime", "openai-insecure-api-key.sk-local", "openai-beta.realtime-v1"]) as ws:
            assert ws.subprotocol == "realtime"
            created = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "response.create"}))
            kinds = []
            while "response.done" not in kinds:
                kinds.append(json.loads(await ws.recv())["type"])
    assert "input_audio_format" in created["session"]  # the flat beta session
    assert "response.audio.delta" in kinds and "response.output_audio.delta" not in kinds
