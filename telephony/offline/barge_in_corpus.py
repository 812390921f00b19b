"""Caller sounds over the agent's answer, made offline, for the barge-in benchmark.

Each clip is what a caller might do while the agent talks, at the phone's 8 kHz, labelled with
what the bridge should do about it: backchannels ("mm-hmm", "yeah") in several espeak-ng voices
and speeds, coughs, clicks and noise bursts (sox), a backchannel under babble or street-like noise
at 20 and 10 dB SNR, and real interruptions from one word ("stop", "wait") to whole sentences.
espeak-ng and sox are Debian's; a clip whose tool is missing is left out (``missing`` says which).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

RATE = 8000
RESUME, STOP = "resume", "stop"

BACKCHANNELS = ("mm-hmm", "uh-huh", "yeah", "okay", "right", "hmm")
INTERRUPTIONS = ("stop", "wait", "hold on", "no, not that one",
                 "wait, that's not what I asked for", "sorry, can you repeat the last part please")
VOICES = ("en-us", "en-gb", "en+f3", "en+m3")
SPEEDS = (150, 190)  # words per minute (espeak-ng's default is 175)


@dataclass(frozen=True)
class Clip:
    name: str
    kind: str  # backchannel, noise, backchannel+noise, interruption
    expected: str  # RESUME or STOP
    pcm: np.ndarray  # int16 at 8 kHz
    text: str = ""  # what was said ("" for a noise)
    speech_at: float = 0.0  # seconds into the clip the words start (after a noise bed's lead-in)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE


def speak(text: str, voice: str = "en-us", speed: int = 175) -> np.ndarray:
    """espeak-ng's speech at 8 kHz (int16), trimmed of its leading and trailing silence."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True,
                       capture_output=True)
        pcm, rate = _read_wav(wav)
    return _trim(_to_8k(pcm, rate))


def sox_synth(*effects: str, seconds: float) -> np.ndarray:
    """A sound sox makes (``synth`` and its effects) at 8 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "n.wav"
        subprocess.run(["sox", "-n", "-r", str(RATE), "-b", "16", "-c", "1", str(wav), "synth", str(seconds),
                        *effects], check=True, capture_output=True)
        pcm, _ = _read_wav(wav)
    return pcm


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import wave
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy(), w.getframerate()


def _to_8k(pcm: np.ndarray, rate: int) -> np.ndarray:
    if rate == RATE:
        return pcm
    return np.clip(soxr.resample(pcm.astype(np.float32), rate, RATE), -32768, 32767).astype(np.int16)


def _trim(pcm: np.ndarray, threshold: int = 300) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    return pcm[loud[0]:loud[-1] + 1] if len(loud) else pcm


NOISE_LEAD_S = 0.2  # a noise bed starts this long before the words over it


def _mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech`` with ``noise`` under it at ``snr_db``, the noise starting NOISE_LEAD_S before it."""
    lead = round(RATE * NOISE_LEAD_S)
    noise = np.resize(noise, len(speech) + 2 * lead).astype(np.float64)
    p_speech = np.mean(speech.astype(np.float64) ** 2)
    noise *= np.sqrt(p_speech / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    out = noise.copy()
    out[lead:lead + len(speech)] += speech
    return np.clip(out, -32768, 32767).astype(np.int16)


def _babble() -> np.ndarray:
    """Several voices at once: a room with people talking."""
    lines = ["the meeting is at ten tomorrow morning", "could you pass me the report",
             "we should order lunch soon", "the train was late again today"]
    voices = [speak(line, voice, 170) for line, voice in zip(lines, VOICES)]
    n = max(len(v) for v in voices)
    return sum(np.resize(v, n).astype(np.float64) for v in voices).clip(-32768, 32767).astype(np.int16)


def _street() -> np.ndarray:
    """Traffic-like: low rumble and brown noise with a slow swell."""
    rumble = sox_synth("brownnoise", "lowpass", "400", seconds=3.0).astype(np.float64)
    swell = 0.6 + 0.4 * np.sin(np.linspace(0, 3 * np.pi, len(rumble)))
    return (rumble * swell).clip(-32768, 32767).astype(np.int16)


def missing() -> list[str]:
    return [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]


def corpus(quick: bool = False) -> list[Clip]:
    """Every clip (``quick``: one voice and speed per word, for a smoke run)."""
    voices, speeds = (VOICES[:1], SPEEDS[:1]) if quick else (VOICES, SPEEDS)
    clips: list[Clip] = []
    for word in BACKCHANNELS:
        for voice in voices:
            for speed in speeds:
                clips.append(Clip(f"{word} ({voice}, {speed} wpm)", "backchannel", RESUME,
                                  speak(word, voice, speed), word))
    noises = {
        "cough": sox_synth("pinknoise", "fade", "q", "0.01", "0.25", "0.15", "gain", "-4", seconds=0.25),
        "click": sox_synth("square", "1000", "fade", "0", "0.03", "0.02", seconds=0.03),
        "door": sox_synth("brownnoise", "fade", "q", "0.005", "0.4", "0.3", "gain", "-2", seconds=0.4),
        "noise burst": sox_synth("whitenoise", "fade", "q", "0.02", "0.3", "0.1", "gain", "-10", seconds=0.3),
    }
    clips += [Clip(name, "noise", RESUME, pcm) for name, pcm in noises.items()]
    backgrounds = {"babble": _babble(), "street": _street()}
    for background, noise in (list(backgrounds.items())[:1] if quick else backgrounds.items()):
        for snr in (20, 10):
            for word in ("mm-hmm", "yeah"):
                clips.append(Clip(f"{word} under {background} at {snr} dB", "backchannel+noise", RESUME,
                                  _mix(speak(word), noise, snr), word, speech_at=NOISE_LEAD_S))
    for text in (INTERRUPTIONS[:3] if quick else INTERRUPTIONS):
        for voice in voices:
            clips.append(Clip(f"{text!r} ({voice})", "interruption", STOP, speak(text, voice, 175), text))
    return clips
