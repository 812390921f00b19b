"""The caller's side of a barge-in benchmark, generated offline: what a caller says or makes heard
over the agent, each clip labelled with what the agent should do about it.

Classes and the decision each expects:

- ``backchannel`` → ``resume``: "mm-hmm", "uh-huh", "yeah", "okay", "right", "hmm" in several
  espeak-ng voices and speeds, and some of them with babble or street noise under them at 20 and
  10 dB SNR;
- ``noise`` → ``resume``: coughs, clicks, noise bursts (sox ``synth``), and babble or street noise
  on its own (a TV, a passing car);
- ``interruption`` → ``stop``: one word ("stop", "wait") to whole sentences, some of them with
  noise under them too.

Clips are 16-bit mono WAV at 8 kHz (what the simulator's caller sends, after μ-law: read them
with ``wavfile.read_ulaw8k``). ``manifest.json`` beside them lists every clip with its class,
expected decision, text and sound onset (ms from the clip's start: where the caller's sound
begins, for pause latency). espeak-ng and sox must be installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from telephony.offline.wavfile import LINE_RATE, read_pcm8k

BACKCHANNELS = ("mm-hmm", "uh-huh", "yeah", "okay", "right", "hmm")
INTERRUPTIONS = ("Stop.", "Wait.", "Wait, stop.", "No, that's wrong.", "Wait, that's not what I asked for.",
                 "Hold on, can you repeat the last part about the order?")
VOICES = ("en-us", "en-gb", "en+f3", "en+m3")
SPEEDS = (140, 175, 220)  # words per minute: slow, espeak's default, hurried
SNRS_DB = (20, 10)
BABBLE_LINES = ("The weather will be cloudy in the afternoon with light rain.",
                "Please remember to bring the documents to the meeting tomorrow.",
                "Our next guest is a chef who has cooked in three countries.",
                "Traffic on the bridge is slow because of an accident on the right lane.")
EXPECTED = {"backchannel": "resume", "noise": "resume", "interruption": "stop"}
ONSET_RMS = 300.0  # PCM16 RMS of a 20 ms frame counted as sound (the engine's VAD starts at 500)


@dataclass(frozen=True)
class Clip:
    name: str  # file name without .wav
    kind: str  # "backchannel", "noise" or "interruption"
    expected: str  # "resume" or "stop"
    text: str  # what is said, or what the noise is
    voice: str = ""
    speed: int = 0
    snr_db: int | None = None  # noise under the speech, if any
    onset_ms: int = 0
    duration_ms: int = 0

    def path(self, folder: Path) -> Path:
        return folder / f"{self.name}.wav"


class ToolMissing(RuntimeError):
    pass


def require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if not shutil.which(tool)]
    if missing:
        raise ToolMissing(f"the barge-in corpus needs {' and '.join(missing)} installed")


# --- Sources ---


def speak(text: str, voice: str = "en-us", speed: int = 175) -> np.ndarray:
    """espeak-ng speech as float PCM16 units at 8 kHz, its own silence trimmed off both ends."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "say.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text],
                       check=True, capture_output=True, timeout=30)
        return _trim(read_pcm8k(wav).astype(np.float64))


def synth(seconds: float, *effects: str) -> np.ndarray:
    """``sox -n … synth``: a generated sound at 8 kHz, as float PCM16 units."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "synth.wav"
        subprocess.run(["sox", "-n", "-r", str(LINE_RATE), "-c", "1", "-b", "16", str(wav),
                        "synth", f"{seconds}", *effects], check=True, capture_output=True, timeout=30)
        return read_pcm8k(wav).astype(np.float64)


def _trim(x: np.ndarray, level: float = 100.0) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > level)
    return x[loud[0]: loud[-1] + 1] if len(loud) else x


def cough() -> np.ndarray:
    """Two bursts of band-limited noise with a fast attack: closer to a cough than a tone."""
    burst = synth(0.18, "brownnoise", "fade", "q", "0.005", "0.18", "0.13", "vol", "0.9")
    return np.concatenate([burst, np.zeros(LINE_RATE // 12), 0.6 * burst])


def click() -> np.ndarray:
    """A handset knock: 8 ms of white noise, then a little ring-down."""
    return synth(0.04, "whitenoise", "fade", "q", "0.001", "0.04", "0.032", "vol", "0.9")


def noise_burst(seconds: float = 0.4) -> np.ndarray:
    return synth(seconds, "pinknoise", "fade", "q", "0.02", f"{seconds}", "0.1", "vol", "0.5")


def babble(seconds: float) -> np.ndarray:
    """Several voices at once (a TV, a café): four espeak-ng speakers summed."""
    voices = [speak(line, voice, 160) for line, voice in zip(BABBLE_LINES, VOICES)]
    n = int(seconds * LINE_RATE)
    mix = np.zeros(n)
    for k, v in enumerate(voices):
        tiled = np.tile(v, n // len(v) + 2)
        start = k * len(v) // len(voices)  # the speakers out of step
        mix += tiled[start: start + n]
    return mix / len(voices)


def street(seconds: float) -> np.ndarray:
    """Traffic rumble: brown noise, low-passed, with a slow swell like passing cars."""
    x = synth(seconds, "brownnoise", "lowpass", "600", "vol", "0.7")
    t = np.arange(len(x)) / LINE_RATE
    return x * (0.6 + 0.4 * np.sin(2 * np.pi * 0.4 * t))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0


NOISE_LEAD_S = 0.3  # the line is noisy this long before the words under noise start


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, lead_s: float = NOISE_LEAD_S) -> np.ndarray:
    """Noise from ``lead_s`` before the speech to its end, scaled so that speech RMS over noise RMS
    is ``snr_db``. The noise's lead-in is part of the clip: the line is noisy before the words."""
    lead = int(lead_s * LINE_RATE)
    n = lead + len(speech)
    bed = np.resize(noise, n)
    bed = bed * (_rms(speech) / max(_rms(bed), 1e-9)) / 10 ** (snr_db / 20)
    out = bed.copy()
    out[lead:] += speech
    return out


def onset_ms(x: np.ndarray, frame_ms: int = 20) -> int:
    """Where the clip's sound starts: the first 20 ms frame at speech loudness."""
    frame = LINE_RATE * frame_ms // 1000
    n = len(x) // frame
    if n == 0:
        return 0
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms >= ONSET_RMS)
    return int(loud[0] * frame_ms) if len(loud) else 0


# --- The corpus ---


def _plan() -> list[tuple[Clip, callable]]:
    """Every clip as (label, how to make its audio)."""
    plan: list[tuple[Clip, callable]] = []

    def add(name: str, kind: str, text: str, make, **extra) -> None:
        plan.append((Clip(name, kind, EXPECTED[kind], text, **extra), make))

    for word in BACKCHANNELS:
        slug = word.replace("-", "")
        for voice in VOICES:
            add(f"bc-{slug}-{voice.replace('+', '_')}-175", "backchannel", word,
                lambda w=word, v=voice: speak(w, v, 175), voice=voice, speed=175)
        for speed in (SPEEDS[0], SPEEDS[2]):
            add(f"bc-{slug}-en-us-{speed}", "backchannel", word,
                lambda w=word, s=speed: speak(w, "en-us", s), voice="en-us", speed=speed)
    for word in ("mm-hmm", "yeah"):
        for bed_name, bed in (("babble", babble), ("street", street)):
            for snr in SNRS_DB:
                add(f"bc-{word.replace('-', '')}-{bed_name}-{snr}db", "backchannel", word,
                    lambda w=word, b=bed, s=snr: mix_at_snr(speak(w), b(2.0), s),
                    voice="en-us", speed=175, snr_db=snr)
    add("noise-cough", "noise", "a cough", cough)
    add("noise-click", "noise", "a click on the line", click)
    add("noise-clicks", "noise", "three clicks", lambda: np.concatenate(
        [np.concatenate([click(), np.zeros(LINE_RATE // 5)]) for _ in range(3)]))
    for seconds in (0.2, 0.4, 0.7):
        add(f"noise-burst-{int(seconds * 1000)}ms", "noise", f"{seconds:.1f} s of pink noise",
            lambda s=seconds: noise_burst(s))
    add("noise-babble-1s", "noise", "1 s of background voices", lambda: babble(1.0) * 0.8)
    add("noise-street-1s", "noise", "1 s of traffic", lambda: street(1.0) * 2.0)
    for text in INTERRUPTIONS:
        slug = "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c == "-").strip("-")[:32]
        for voice in ("en-us", "en-gb", "en+f3"):
            add(f"int-{slug}-{voice.replace('+', '_')}", "interruption", text,
                lambda t=text, v=voice: speak(t, v, 175), voice=voice, speed=175)
    for text in ("Stop.", "Wait, that's not what I asked for."):
        slug = "stop" if text == "Stop." else "wait-sentence"
        for bed_name, bed in (("babble", babble), ("street", street)):
            for snr in SNRS_DB:
                add(f"int-{slug}-{bed_name}-{snr}db", "interruption", text,
                    lambda t=text, b=bed, s=snr: mix_at_snr(speak(t), b(4.0), s),
                    voice="en-us", speed=175, snr_db=snr)
    return plan


def generate(folder: str | Path, kinds: tuple[str, ...] = tuple(EXPECTED)) -> list[Clip]:
    """Writes every clip of the given classes and ``manifest.json`` into ``folder``."""
    require_tools()
    for kind in kinds:
        if kind not in EXPECTED:
            raise ValueError(f"unknown clip class {kind!r}: expected one of {', '.join(EXPECTED)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for label, make in _plan():
        if label.kind not in kinds:
            continue
        x = make()
        pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2")
        # Under noise, the caller's sound is the words: the background was on the line before them.
        onset = int(NOISE_LEAD_S * 1000) if label.snr_db is not None else onset_ms(x)
        clip = Clip(**{**asdict(label), "onset_ms": onset, "duration_ms": len(pcm) * 1000 // LINE_RATE})
        _write(clip.path(folder), pcm)
        clips.append(clip)
    (folder / "manifest.json").write_text(json.dumps([asdict(c) for c in clips], indent=1))
    return clips


def load(folder: str | Path) -> list[Clip]:
    """The clips a ``generate`` wrote, from its manifest."""
    manifest = Path(folder) / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} is missing: generate the corpus first")
    return [Clip(**entry) for entry in json.loads(manifest.read_text())]


def _write(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(LINE_RATE)
        w.writeframes(pcm.tobytes())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where to write the clips and manifest.json")
    parser.add_argument("--kind", action="append", choices=sorted(EXPECTED), help="only these classes")
    args = parser.parse_args(argv)
    clips = generate(args.folder, tuple(args.kind or EXPECTED))
    for kind, expected in EXPECTED.items():
        print(f"{kind:13s} {sum(c.kind == kind for c in clips):3d} clips (expect {expected})")
    print(f"written to {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
