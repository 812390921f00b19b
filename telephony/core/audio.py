"""Audio conversion between Twilio (μ-law 8 kHz) and the Realtime model (PCM16 24 kHz).

Resampling is a streaming polyphase FIR (Kaiser-windowed sinc) in numpy rather than
``soxr.ResampleStream``: soxr's HQ stream holds audio back and releases it in ~60 ms
blocks (measured: 0, 0, 0, 1468 samples for four 20 ms frames), which would batch the
caller's audio. This filter emits every frame at once with a fixed 1.8 ms delay and
rejects everything above 4.6 kHz by more than 75 dB, so nothing aliases going down.
``audioop.ratecv`` has no such filter at all: a 6 kHz tone folds to 2 kHz at full level.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

TWILIO_RATE = 8000
MODEL_RATE = 24000
RATIO = MODEL_RATE // TWILIO_RATE
PCM16_BYTES_PER_MS = MODEL_RATE * 2 // 1000  # 48
ULAW_BYTES_PER_MS = TWILIO_RATE // 1000  # 8
# Canonical base64 (RFC 4648 alphabet, padded): the only text a passthrough delta may be, since
# it is written into Twilio's JSON as it is (a quote in it would end the string and add fields).
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@lru_cache(maxsize=None)
def lowpass_taps(fs: int = MODEL_RATE, cutoff: float = 4000.0, transition: float = 1200.0,
                 attenuation_db: float = 75.0) -> np.ndarray:
    """Kaiser-windowed sinc low-pass; cutoff at the 8 kHz Nyquist, stopband from 4.6 kHz."""
    beta = 0.1102 * (attenuation_db - 8.7)
    n = int(np.ceil((attenuation_db - 7.95) / (2.285 * 2 * np.pi * transition / fs))) | 1
    t = np.arange(n) - (n - 1) / 2
    taps = 2 * cutoff / fs * np.sinc(2 * cutoff / fs * t) * np.kaiser(n, beta)
    taps = taps / taps.sum()
    taps.setflags(write=False)
    return taps


_INT16_MIN, _INT16_MAX = np.float32(-32768), np.float32(32767)  # float32: no per-call scalar cast


def _to_int16(x: np.ndarray) -> bytes:
    """Rounds and saturates in place (x is scratch), then packs little-endian int16."""
    np.rint(x, out=x)
    np.maximum(x, _INT16_MIN, out=x)
    np.minimum(x, _INT16_MAX, out=x)
    return x.astype("<i2").tobytes()


def _windows(buf: np.ndarray, width: int, start: int = 0, step: int = 1) -> np.ndarray:
    """Rows buf[start + i*step : start + i*step + width], as a view (no copy).

    Built directly with ``np.ndarray``: ``sliding_window_view`` costs ~30 µs of Python per
    call, more than the arithmetic on a 20 ms frame.
    """
    rows = (len(buf) - width - start) // step + 1 if len(buf) - width >= start else 0
    item = buf.itemsize
    return np.ndarray((rows, width), buf.dtype, buf, start * item, (step * item, item))


def _with_history(history: np.ndarray, x: np.ndarray) -> np.ndarray:
    buf = np.empty(len(history) + len(x), dtype=np.float32)
    buf[: len(history)] = history
    buf[len(history):] = x
    return buf


class Upsampler:
    """Streaming 8 kHz → 24 kHz (``ratio`` 3; 2 for a 16 kHz line, wire/vonage.py). Keeps the
    filter's history across frames."""

    def __init__(self, ratio: int = RATIO) -> None:
        taps = lowpass_taps(TWILIO_RATE * ratio) * ratio  # zero-stuffing divides the level by the ratio
        # Polyphase: output sample 3n+p = sum_k taps[3k+p] * x[n-k], one sub-filter per phase.
        n_sub = -(-len(taps) // ratio)
        padded = np.zeros(n_sub * ratio)
        padded[: len(taps)] = taps
        phases = padded.reshape(n_sub, ratio).T  # (ratio, n_sub)
        # All phases in one matrix product: window i of the input times the reversed sub-filters.
        self._kernel = np.ascontiguousarray(phases[:, ::-1].T, dtype=np.float32)  # (n_sub, ratio)
        self._history = np.zeros(n_sub - 1, dtype=np.float32)

    def process(self, pcm8k: bytes) -> bytes:
        x = np.frombuffer(pcm8k, dtype="<i2")
        if not len(x):
            return b""
        buf = _with_history(self._history, x)
        self._history = buf[len(x):]
        # np.dot, not @: it hands the strided view to BLAS as is (3x faster here, measured).
        out = np.dot(_windows(buf, len(self._kernel)), self._kernel)  # (len(x), ratio), interleaved
        return _to_int16(out.ravel())

    def reset(self) -> None:
        self._history = np.zeros_like(self._history)


class Downsampler:
    """Streaming 24 kHz → 8 kHz (``ratio`` 3; 2 from a 16 kHz line), anti-aliased. Carries
    history and the decimation phase."""

    def __init__(self, ratio: int = RATIO) -> None:
        taps = lowpass_taps(TWILIO_RATE * ratio).astype(np.float32)
        self._ratio = ratio
        self._n_taps = len(taps)
        self._reversed = np.ascontiguousarray(taps[::-1])
        self._history = np.zeros(len(taps) - 1, dtype=np.float32)
        self._phase = 0  # input samples to skip before the next kept output

    def process(self, pcm24k: bytes) -> bytes:
        x = np.frombuffer(pcm24k, dtype="<i2")
        if not len(x):
            return b""
        buf = _with_history(self._history, x)
        # Only every third output is kept, so only those are computed.
        kept = np.dot(_windows(buf, self._n_taps, self._phase, self._ratio), self._reversed)
        self._phase = (self._phase - len(x)) % self._ratio
        self._history = buf[len(x):]
        return _to_int16(kept)

    def flush(self) -> bytes:
        """The filter's tail: pushes half a filter of silence so the last sound is heard."""
        return self.process(bytes(2 * (self._n_taps // 2)))

    def reset(self) -> None:
        self._history = np.zeros_like(self._history)
        self._phase = 0


# --- Per-call codecs: what the call core uses. Both speak base64, the form both wires carry. ---


@dataclass(frozen=True)
class ModelAudio:
    """A chunk of agent audio ready for Twilio, with its length on the model's own clock."""

    payload: str  # base64 μ-law 8 kHz
    model_ms: float  # duration of the model audio this came from


class Pcm16Codec:
    """μ-law 8 kHz ⇄ PCM16 24 kHz, one streaming converter per direction."""

    model_format = "pcm16"

    def __init__(self) -> None:
        self._up = Upsampler()
        self._down = Downsampler()

    def caller_to_model(self, payload: str) -> str:
        ulaw = base64.b64decode(payload, validate=True)
        return base64.b64encode(self._up.process(audioop.ulaw2lin(ulaw, 2))).decode("ascii")

    def model_to_caller(self, delta: str) -> ModelAudio:
        pcm = base64.b64decode(delta, validate=True)
        if len(pcm) % 2:
            pcm = pcm[:-1]  # a torn sample is noise; keep the stream aligned
        ulaw = audioop.lin2ulaw(self._down.process(pcm), 2)
        return ModelAudio(base64.b64encode(ulaw).decode("ascii"), len(pcm) / PCM16_BYTES_PER_MS)

    def end_of_item(self) -> str:
        """Flushes the resampler tail at the end of an agent item; resets for the next."""
        tail = audioop.lin2ulaw(self._down.flush(), 2)
        self._down.reset()
        return base64.b64encode(tail).decode("ascii")

    def interrupted(self) -> None:
        self._down.reset()


class UlawPassthroughCodec:
    """The model speaks μ-law 8 kHz itself: payloads pass through untouched."""

    model_format = "g711_ulaw"

    def caller_to_model(self, payload: str) -> str:
        return payload

    def model_to_caller(self, delta: str) -> ModelAudio:
        if not _BASE64.fullmatch(delta):  # ~1 µs per 20 ms frame, measured in benchmarks/load.py
            raise ValueError("not canonical base64")
        # Length from the base64 text itself: 4 chars carry 3 bytes, minus padding.
        n = len(delta) * 3 // 4 - delta[-2:].count("=") if delta else 0
        return ModelAudio(delta, n / ULAW_BYTES_PER_MS)

    def end_of_item(self) -> str:
        return ""

    def interrupted(self) -> None:
        pass


def make_codec(name: str) -> Pcm16Codec | UlawPassthroughCodec:
    if name == "pcm16":
        return Pcm16Codec()
    if name == "g711_ulaw":
        return UlawPassthroughCodec()
    raise ValueError(f"unknown audio codec {name!r} (expected pcm16 or g711_ulaw)")
