"""Voices for the local Realtime engine: text in, PCM16 24 kHz mono out.

``EspeakVoice`` runs the ``espeak-ng`` binary (real, if robotic, speech). ``FormantVoice`` needs
nothing installed: it synthesises speech-like babble (voiced syllables with vowel formants, a
falling pitch, word and phrase pauses) whose length follows the text, so VAD, barge-in and
truncation behave as they would with speech. ``make_voice`` picks espeak-ng when present.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import wave
from typing import Protocol

import numpy as np
import soxr

RATE = 24000


class Voice(Protocol):
    name: str

    def speak(self, text: str) -> bytes:
        """PCM16 little-endian mono at 24 kHz."""
        ...


def wav_to_pcm24k(data: bytes) -> bytes:
    """A WAV file's audio as PCM16 mono 24 kHz. Tolerates espeak's streamed header (size unknown)."""
    with wave.open(io.BytesIO(data)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"expected 16-bit audio, got {8 * width}-bit")
    x = np.frombuffer(raw[: len(raw) // (2 * channels) * 2 * channels], "<i2").reshape(-1, channels)
    mono = x.mean(axis=1).astype(np.float32)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)  # whole utterances: the one-shot API is fine
    return np.clip(np.rint(mono), -32768, 32767).astype("<i2").tobytes()


def trim_silence(pcm: bytes, level: int = 64, keep_ms: int = 10) -> bytes:
    """Drops the synthesiser's own lead-in and tail silence: latency is the engine's to add."""
    x = np.frombuffer(pcm, "<i2")
    loud = np.flatnonzero(np.abs(x) > level)
    if not len(loud):
        return pcm
    keep = RATE * keep_ms // 1000
    return x[max(0, loud[0] - keep): loud[-1] + 1 + keep].tobytes()


class EspeakVoice:
    """``espeak-ng --stdout``; each distinct text is synthesised once (~40 ms) and kept."""

    name = "espeak-ng"

    def __init__(self, binary: str = "espeak-ng", voice: str = "en-us", words_per_minute: int = 165) -> None:
        self.binary, self.voice, self.wpm = binary, voice, words_per_minute
        self._cache: dict[str, bytes] = {}

    def speak(self, text: str) -> bytes:
        if text not in self._cache:
            out = subprocess.run([self.binary, "--stdout", "-v", self.voice, "-s", str(self.wpm), text],
                                 capture_output=True, check=True, timeout=10).stdout
            self._cache[text] = trim_silence(wav_to_pcm24k(out))
        return self._cache[text]


# F1, F2, F3 (Hz) of a few vowels; enough variety to sound like talking.
_VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (390, 1990, 2550),
           "o": (570, 840, 2410), "u": (440, 1020, 2240), "y": (390, 1990, 2550)}
_SYLLABLE = re.compile(r"[^aeiouy]*[aeiouy]+", re.IGNORECASE)


class FormantVoice:
    """Speech-like audio without a synthesiser: one voiced, formant-shaped burst per syllable."""

    name = "built-in formant synthesiser"

    def __init__(self, pitch_hz: float = 125.0, syllable_ms: float = 170.0, level: float = 6000.0) -> None:
        self.pitch, self.syllable_ms, self.level = pitch_hz, syllable_ms, level
        self._cache: dict[str, bytes] = {}

    def speak(self, text: str) -> bytes:
        if text not in self._cache:
            self._cache[text] = self._render(text)
        return self._cache[text]

    def _render(self, text: str) -> bytes:
        pieces: list[np.ndarray] = []
        words = re.findall(r"[\w']+|[.,!?;:]", text) or ["ah"]
        n_syll = sum(len(_SYLLABLE.findall(w)) or 1 for w in words if w[0].isalnum())
        k, phase = 0, 0.0
        for word in words:
            if not word[0].isalnum():
                pieces.append(np.zeros(int(RATE * 0.22)))  # phrase pause
                continue
            for syll in _SYLLABLE.findall(word) or [word]:
                vowel = next((c for c in syll.lower() if c in _VOWELS), "a")
                f0 = self.pitch * (1.1 - 0.25 * k / max(1, n_syll - 1))  # declination
                seg, phase = self._syllable(_VOWELS[vowel], f0, phase)
                pieces.append(seg)
                k += 1
            pieces.append(np.zeros(int(RATE * 0.05)))  # word gap
        pcm = np.concatenate(pieces)
        return np.clip(np.rint(pcm), -32768, 32767).astype("<i2").tobytes()

    def _syllable(self, formants: tuple[int, int, int], f0: float, phase: float) -> tuple[np.ndarray, float]:
        n = int(RATE * self.syllable_ms / 1000)
        t = np.arange(n) / RATE
        f0_t = f0 * (1 + 0.04 * np.sin(2 * np.pi * 3 * t))  # a little vibrato, less buzzy
        ph = phase + 2 * np.pi * np.cumsum(f0_t) / RATE
        harmonics = np.arange(1, int(4000 / f0) + 1)
        gain = sum(a * np.exp(-(((harmonics * f0 - f) / bw) ** 2))
                   for f, bw, a in zip(formants, (90, 120, 160), (1.0, 0.6, 0.25)))
        gain = gain / harmonics ** 0.5 + 0.02  # spectral tilt plus a floor
        voiced = gain @ np.sin(harmonics[:, None] * ph[None, :])
        envelope = np.sin(np.pi * np.arange(n) / n) ** 0.6
        voiced = voiced / (np.abs(voiced).max() or 1.0) * envelope * self.level
        return voiced, float(ph[-1] % (2 * np.pi))


def make_voice(prefer: str = "auto") -> Voice:
    """``auto``: espeak-ng when the binary is installed and works, else the built-in synthesiser."""
    if prefer in ("auto", "espeak-ng") and shutil.which("espeak-ng"):
        voice = EspeakVoice()
        try:
            voice.speak("OK.")  # a broken install should cost the voice, not the call
            return voice
        except (OSError, subprocess.SubprocessError, ValueError, EOFError, wave.Error):
            if prefer == "espeak-ng":
                raise
    elif prefer == "espeak-ng":
        raise RuntimeError("espeak-ng is not installed")
    return FormantVoice()
