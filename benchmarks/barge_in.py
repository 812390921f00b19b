"""Barge-in over a real phone line, measured: does the agent's answer survive a backchannel or a
noise, and does it stop for a real interruption, and how fast?

Each clip of the barge-in corpus (``telephony.offline.barge_in_corpus``: backchannels, noises,
interruptions, labelled resume/stop) is played by a simulated Twilio caller over the agent's
greeting, in one call per clip, into the real app with the local Realtime engine (μ-law, so
the bridge forwards the model's bytes unchanged and what the caller heard can be matched to
what the agent said, byte for byte). Per class it reports:

- false stops: a clip that should have let the answer go on ended it;
- missed interruptions: an interruption after which the answer still played to its end;
- pause latency: from the clip's sound onset to the agent's audio stopping at the caller;
- resume latency: from the end of the clip to the agent's audio coming back, when the answer
  was resumed (not stopped);
- heard vs sent: ms of the answer never heard (skipped) and heard twice (repeated), for clips
  that should resume.

Medians over the clips; ``-`` where nothing was measured. Usage:

    python benchmarks/barge_in.py [--corpus DIR] [--per-class N] [--concurrency N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from telephony.core.profile import load_profile
from telephony.offline import barge_in_corpus as corpus
from telephony.offline.demo import LOOPBACK, UtteranceTap, render_ulaw, serving
from telephony.offline.dial import place_call
from telephony.offline.heard import compare
from telephony.offline.local_engine import EngineConfig, RealtimeEngine, SpeakingPersona
from telephony.offline.local_realtime import LocalTransport
from telephony.offline.recognizer import default_recognizer
from telephony.offline.voices import make_voice
from telephony.offline.wavfile import read_ulaw8k
from telephony.serve.app import create_app
from telephony.settings import Settings

# The answer talked over: long enough that every clip ends well inside it.
ANSWER = ("Your order A seventeen left our warehouse on Monday morning and is now with the courier. "
          "It should reach you by Thursday afternoon, and you will get a text message with a "
          "tracking link as soon as it is out for delivery.")
CLIP_AT_S = 1.5  # the clip starts this far into the call (the answer starts at once)
STOPPED_SKIPPED_MS = 200  # more of the answer than this never heard: it was stopped


@dataclass
class Outcome:
    clip: str
    kind: str
    expected: str
    paused: bool
    stopped: bool
    pause_ms: float | None
    resume_ms: float | None
    skipped_ms: float
    repeated_ms: float
    error: str = ""


def ulaw_silence(seconds: float) -> bytes:
    return b"\xff" * int(seconds * 8000)


class Connector:
    """One engine per call, each with its own tap on the events (calls run side by side)."""

    def __init__(self, greeting: str) -> None:
        self.persona = SpeakingPersona(make_voice(), recognizer=default_recognizer())
        self.persona.warm(greeting)
        self.taps: dict[str, UtteranceTap] = {}
        self.answer = render_ulaw(self.persona.voice, greeting)  # all of it, as a call's engine sends it

    def factory(self, settings: Settings):
        config = EngineConfig(dialect=settings.realtime_dialect)

        async def connect() -> LocalTransport:
            tap = UtteranceTap()
            session = "sess_" + uuid.uuid4().hex[:20]
            self.taps[session] = tap
            return LocalTransport(RealtimeEngine(self.persona, config, session), tap.observe)

        return connect


def measure(clip: corpus.Clip, result: Any, answer: bytes) -> Outcome:
    onset = CLIP_AT_S + clip.onset_ms / 1000
    clip_end = CLIP_AT_S + clip.duration_ms / 1000
    timeline = result.timeline
    # From the clip's start, not its onset: under noise the bed may set it off before the words,
    # which shows as a negative pause.
    stop = next((e.t for e in timeline if e.kind == "agent_audio_stop" and e.t >= CLIP_AT_S), None)
    heard = compare(answer, result.played)
    stopped = heard.skipped_ms > STOPPED_SKIPPED_MS
    # Paused: the agent went quiet at the caller before its answer was over (not its natural end).
    paused = stop is not None and (stopped or heard.repeated_ms > 0 or _restarted_after(timeline, stop))
    pause_ms = (stop - onset) * 1000 if paused else None
    resume_ms = None
    if paused and not stopped:
        again = next((e.t for e in timeline if e.kind == "agent_audio_start" and e.t > stop), None)
        resume_ms = (again - clip_end) * 1000 if again is not None else None
    return Outcome(clip.name, clip.kind, clip.expected, paused, stopped, pause_ms, resume_ms,
                   heard.skipped_ms, heard.repeated_ms)


def _restarted_after(timeline: list, t: float) -> bool:
    return any(e.kind == "agent_audio_start" and e.t > t for e in timeline)


async def run_clip(url: str, clip: corpus.Clip, folder: Path, connector: Connector) -> Outcome:
    caller = ulaw_silence(CLIP_AT_S) + read_ulaw8k(clip.path(folder))
    before = set(connector.taps)
    try:
        _, result = await place_call(url, caller, tail_s=12.0, hang_up_when_quiet_s=1.5)
    except Exception as exc:  # one broken call is a row, not the end of the run
        return Outcome(clip.name, clip.kind, clip.expected, False, False, None, None, 0, 0, repr(exc))
    session = next(iter(set(connector.taps) - before), None)
    sent = connector.taps[session].first() if session else b""
    if not connector.answer.startswith(sent) or not sent:  # not the answer we think it is
        return Outcome(clip.name, clip.kind, clip.expected, False, False, None, None, 0, 0,
                       "the call's answer differs from the reference")
    return measure(clip, result, connector.answer)


async def run(clips: list[corpus.Clip], folder: Path, concurrency: int) -> list[Outcome]:
    settings = Settings(realtime_url="local", host=LOOPBACK, twilio_validate_signatures=False,
                        audio_codec="g711_ulaw")
    profile = replace(load_profile(settings.profile_path()), greeting=ANSWER)
    connector = Connector(profile.greeting)
    app = create_app(settings, profile, connector.factory)
    gate = asyncio.Semaphore(concurrency)
    async with serving(app) as port:
        url = f"ws://{LOOPBACK}:{port}/twilio/media-stream"

        async def one(clip: corpus.Clip) -> Outcome:
            async with gate:
                outcome = await run_clip(url, clip, folder, connector)
                print(f"  {clip.name:48s} {'stopped' if outcome.stopped else 'resumed' if outcome.paused else 'played on'}"
                      f"{' ERROR ' + outcome.error if outcome.error else ''}", file=sys.stderr, flush=True)
                return outcome

        return list(await asyncio.gather(*(one(c) for c in clips)))


def _median(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    return f"{statistics.median(got):.0f}" if got else "-"


def table(outcomes: list[Outcome]) -> str:
    head = (f"{'class':13s} {'clips':>5s} {'false stops':>11s} {'missed int.':>11s} {'pause ms':>9s} "
            f"{'resume ms':>9s} {'skipped ms':>10s} {'repeated ms':>11s}")
    rows = [head, "-" * len(head)]
    for kind, expected in corpus.EXPECTED.items():
        mine = [o for o in outcomes if o.kind == kind and not o.error]
        if not mine:
            continue
        false_stops = sum(o.stopped for o in mine) if expected == "resume" else "-"
        missed = sum(not o.stopped for o in mine) if expected == "stop" else "-"
        keep = [o for o in mine if expected == "resume"]  # heard vs sent matters where it should go on
        rows.append(f"{kind:13s} {len(mine):5d} {false_stops!s:>11s} {missed!s:>11s} "
                    f"{_median([o.pause_ms for o in mine]):>9s} {_median([o.resume_ms for o in mine]):>9s} "
                    f"{_median([o.skipped_ms for o in keep]) if keep else '-':>10s} "
                    f"{_median([o.repeated_ms for o in keep]) if keep else '-':>11s}")
    errors = [o for o in outcomes if o.error]
    if errors:
        rows.append(f"({len(errors)} clips failed to run: {', '.join(o.clip for o in errors)})")
    return "\n".join(rows)


def pick(clips: list[corpus.Clip], per_class: int | None) -> list[corpus.Clip]:
    """Up to ``per_class`` clips of each class, spread over its variants (voices, speeds, noises)."""
    if per_class is None:
        return clips
    chosen = []
    for kind in corpus.EXPECTED:
        mine = [c for c in clips if c.kind == kind]
        if mine:
            idx = np.unique(np.linspace(0, len(mine) - 1, min(per_class, len(mine))).round().astype(int))
            chosen += [mine[i] for i in idx]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Barge-in benchmark over the corpus (see the module doc).")
    parser.add_argument("--corpus", type=Path, help="a generated corpus folder (default: generate one in a temp dir)")
    parser.add_argument("--per-class", type=int, default=None, help="at most this many clips per class")
    parser.add_argument("--concurrency", type=int, default=3, help="calls at once (each runs in real time)")
    parser.add_argument("--json", type=Path, help="also write every clip's outcome here")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or (args.per_class is not None and args.per_class < 1):
        parser.error("--concurrency and --per-class must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.corpus or Path(tmp)
        clips = corpus.load(folder) if args.corpus else corpus.generate(folder)
        clips = pick(clips, args.per_class)
        print(f"barge-in benchmark: {len(clips)} clips, {args.concurrency} calls at once", file=sys.stderr)
        started = time.monotonic()
        outcomes = asyncio.run(run(clips, folder, args.concurrency))
    print(table(outcomes))
    print(f"({len(outcomes)} calls in {time.monotonic() - started:.0f} s; medians; pause = caller's sound onset → "
          "agent audio stopped at the caller; resume = end of the clip → agent audio back)")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
