"""Audio conversion between Twilio (μ-law 8 kHz) and the Realtime model (PCM16 24 kHz).

Resampling is wire/resample.py's streaming polyphase filter (why not soxr or audioop: there).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

# The resampler's names, where the core's users and tests have always found them.
from telephony.wire.resample import Downsampler, Upsampler, _to_int16, lowpass_taps  # noqa: F401

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
