"""The offline side of barge-in: the recogniser that transcribes caller turns for the local
engine, the labelled caller corpus, heard-vs-sent matching, and the backchannel demo."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import websockets

from telephony.offline import barge_in_corpus as corpus
from telephony.offline.heard import compare
from telephony.offline.local_realtime import RealtimeServer
from telephony.offline.recognizer import PlaceholderRecognizer, SphinxRecognizer, sphinx_available
from telephony.offline.voices import FormantVoice

ROOT = Path(__file__).resolve().parent.parent
needs_tools = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                 reason="espeak-ng and sox are not installed")
needs_sphinx = pytest.mark.skipif(not sphinx_available(), reason="pocketsphinx is not installed")


def line_quality(pcm8k: np.ndarray) -> bytes:
    """Through μ-law and back, as a caller's audio reaches the engine."""
    import audioop

    return audioop.ulaw2lin(audioop.lin2ulaw(pcm8k.astype("<i2").tobytes(), 2), 2)


@pytest.fixture(scope="module")
def sphinx():
    recognizer = SphinxRecognizer()
    recognizer.warm()
    yield recognizer
    recognizer.close()


@needs_tools
@needs_sphinx
# Only words it hears in every voice and whatever came before (its feature normalisation carries
# over from turn to turn, so a word it half-hears, like "right", depends on the test order).
@pytest.mark.parametrize("said, heard", [("yeah", "yeah"),
                                         ("Hold on, can you repeat the last part about the order?", "order")])
def test_sphinx_hears_espeak_words_at_phone_quality(sphinx, said, heard):
    """Words it gets right on the line (measured on the corpus: "mm-hmm" and "uh-huh" it mostly
    does not); a sentence comes out roughly, its key word included."""
    pcm = line_quality(corpus.speak(said))
    started = time.monotonic()
    text = sphinx.transcribe(pcm, 8000)
    assert heard in text.split(), text
    assert time.monotonic() - started < 20.0  # ~0.1-1.5 s alone; a loaded CI machine is slower


@needs_sphinx
def test_sphinx_says_nothing_for_silence_and_survives_its_worker_dying(sphinx):
    assert sphinx.transcribe(bytes(16000), 8000) == ""  # digital silence: no words (the quiet gate)
    hiss = np.random.default_rng(0).normal(0, 30, 8000).astype("<i2").tobytes()
    assert sphinx.transcribe(hiss, 8000) == ""  # line hiss far below speech
    sphinx.warm()
    dead = sphinx._proc
    dead.kill()
    dead.wait()
    assert sphinx.transcribe(b"", 8000) == ""  # a fresh worker took over
    assert sphinx._proc is not None and sphinx._proc is not dead and sphinx._proc.poll() is None


def test_placeholder_says_how_long_the_turn_was():
    assert PlaceholderRecognizer().transcribe(bytes(16000), 8000) == "[1.0 s of caller speech]"


@needs_tools
@needs_sphinx
async def test_realtime_server_transcribes_a_turn_after_committing_it_without_stalling_its_loop(sphinx):
    """Over a real socket: the transcript comes after ``committed``, from the recogniser, and the
    server's event loop keeps its pace while the worker decodes."""
    pcm = line_quality(np.concatenate([corpus.speak("Hold on, can you repeat the last part about the order?"),
                                       np.zeros(8000)]))
    async with RealtimeServer(FormantVoice(), recognizer=sphinx) as server, \
            websockets.connect(server.url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "input_audio_format": "g711_ulaw", "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "create_response": False}}}))
        import audioop
        ulaw = audioop.lin2ulaw(pcm, 2)
        gaps: list[float] = []

        async def tick() -> None:  # the loop's pace while the worker decodes
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        for i in range(0, len(ulaw), 1600):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(ulaw[i:i + 1600]).decode()}))
        seen = []
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 20))
            seen.append(event["type"])
            if event["type"] == "conversation.item.input_audio_transcription.completed":
                break
        ticker.cancel()
        assert seen.index("input_audio_buffer.committed") < len(seen) - 1
        assert "order" in event["transcript"].split(), event["transcript"]
        assert "response.created" not in seen  # create_response: false
        # pocketsphinx holds the GIL ~1 s for this sentence: in this process it would stall the loop.
        assert max(gaps) < 0.25, max(gaps)


def test_heard_counts_skipped_and_repeated_audio():
    rng = np.random.default_rng(1)
    said = rng.integers(0, 128, 8000, dtype=np.uint8).tobytes()  # 1 s of loud μ-law
    assert compare(said, said).whole
    resumed = said[:3000] + said[3000:]  # paused and resumed exactly where it stopped
    assert compare(said, resumed).whole
    cut = compare(said, said[:3000] + rng.integers(0, 128, 2000, dtype=np.uint8).tobytes())
    assert cut.skipped_ms == 5000 / 8 and cut.other_ms == 2000 / 8 and not cut.whole
    again = compare(said, said[:4000] + said[3200:])
    assert again.repeated_ms == 800 / 8 and again.skipped_ms == 0 and not again.whole
    with pytest.raises(ValueError):
        compare(b"", said)


@needs_tools
def test_demo_backchannel_scenario_reports_whether_the_greeting_was_heard_whole(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "telephony", "demo", "--scenario", "backchannel",
                           "--output", str(tmp_path / "call.wav")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr
    assert 'The caller said "mm-hmm"' in proc.stdout
    verdict = proc.stdout.split("Heard whole? ")[1]
    # The British "mm-hmm" is heard as nothing or a backchannel: the greeting resumes where it paused.
    assert verdict.startswith("yes: the greeting was heard whole"), verdict
    assert "0 ms never" in verdict, verdict
    assert "VAD: caller speech started" in proc.stdout  # the mm-hmm was loud enough to count


def test_demo_refuses_a_scenario_it_does_not_know(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "telephony", "demo", "--scenario", "backchannel",
                           "--dialect", "live", "--output", str(tmp_path / "call.wav")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "backchannel scenario" in proc.stderr
