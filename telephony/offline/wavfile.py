"""WAV files in and out of the simulated phone line: any WAV → μ-law 8 kHz, calls → stereo WAV."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

LINE_RATE = 8000


def _samples(raw: bytes, width: int) -> np.ndarray:
    """Interleaved samples as float32 in PCM16 units, whatever the sample width."""
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) * 256
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32)
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        return (((b[:, 2] << 24) | (b[:, 1] << 16) | (b[:, 0] << 8)) >> 16).astype(np.float32)
    if width == 4:
        return (np.frombuffer(raw, "<i4") >> 16).astype(np.float32)
    raise ValueError(f"unsupported sample width {width}")


def read_pcm8k(path: str | Path) -> np.ndarray:
    """Any PCM WAV (rate, width, channels) as mono int16 at 8 kHz."""
    with wave.open(str(path)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    x = _samples(raw, width)
    x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    if rate != LINE_RATE:
        x = soxr.resample(x, rate, LINE_RATE)  # whole file at once: the one-shot API is fine
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def read_ulaw8k(path: str | Path) -> bytes:
    """Any PCM WAV as the μ-law 8 kHz a phone line carries."""
    return audioop.lin2ulaw(read_pcm8k(path).astype("<i2").tobytes(), 2)


def write_call(path: str | Path, caller_ulaw: bytes, agent_ulaw: bytes) -> None:
    """Stereo 8 kHz 16-bit: caller left, agent right, sample-aligned from the call's start."""
    left = np.frombuffer(audioop.ulaw2lin(caller_ulaw, 2), "<i2")
    right = np.frombuffer(audioop.ulaw2lin(agent_ulaw, 2), "<i2")
    n = max(len(left), len(right))
    stereo = np.zeros((n, 2), "<i2")
    stereo[: len(left), 0] = left
    stereo[: len(right), 1] = right
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(LINE_RATE)
        w.writeframes(stereo.tobytes())


def read_call(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(caller, agent, rate) from a stereo call recording."""
    with wave.open(str(path)) as w:
        if w.getnchannels() != 2 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected a 16-bit stereo call recording")
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    return x[:, 0].copy(), x[:, 1].copy(), rate
