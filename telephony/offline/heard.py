"""What the caller heard of an agent utterance, to the byte: skipped, repeated, heard once.

The simulator records the agent's bytes exactly as played (``CallResult.played``); with a
μ-law session the bridge forwards the model's bytes unchanged, so what was played is a sequence
of stretches of the utterance (plus other audio, e.g. a later answer). Matching those stretches
back onto the utterance tells which of its bytes were heard, how often, and which never.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

BYTES_PER_MS = 8  # μ-law 8 kHz
MIN_MATCH = 160  # a stretch shorter than one 20 ms frame is not taken as the utterance
QUIET_RMS = 200  # PCM16: a 20 ms stretch below this is a pause, found all over any utterance


@dataclass(frozen=True)
class Heard:
    utterance_ms: float  # how long the utterance is
    heard_ms: float  # of it, heard at least once
    skipped_ms: float  # never heard
    repeated_ms: float  # heard more than once (each extra time counts)
    other_ms: float  # played audio that is not this utterance

    @property
    def whole(self) -> bool:
        """All of it heard, none twice (a frame's tolerance either way)."""
        return self.skipped_ms <= 20 and self.repeated_ms <= 20


def compare(utterance: bytes, played: bytes) -> Heard:
    """Matches ``played`` onto ``utterance`` stretch by stretch (the played audio continues where
    the last stretch ended when it can: that is how a resume sounds)."""
    if not utterance:
        raise ValueError("the utterance is empty: nothing to compare against")
    count = np.zeros(len(utterance), np.int32)
    other, i, expected = 0, 0, 0
    while i < len(played):
        start, length = _longest_match(utterance, played, i, expected)
        if length < MIN_MATCH:
            other += 1
            i += 1
            continue
        count[start:start + length] += 1
        i += length
        expected = start + length
    return Heard(utterance_ms=len(utterance) / BYTES_PER_MS,
                 heard_ms=float(np.count_nonzero(count)) / BYTES_PER_MS,
                 skipped_ms=float(np.count_nonzero(count == 0)) / BYTES_PER_MS,
                 repeated_ms=float(np.maximum(count - 1, 0).sum()) / BYTES_PER_MS,
                 other_ms=other / BYTES_PER_MS)


def _longest_match(utterance: bytes, played: bytes, i: int, expected: int) -> tuple[int, int]:
    """Where in ``utterance`` the played audio from ``i`` on comes from, and for how long."""
    probe = played[i:i + MIN_MATCH]
    if len(probe) < MIN_MATCH:
        return 0, 0
    if utterance[expected:expected + MIN_MATCH] == probe:
        start = expected  # the natural continuation first
    elif _quiet(probe):
        return 0, 0  # a pause sounds the same anywhere: it says nothing about where it came from
    else:
        start = utterance.find(probe)
        if start < 0:
            return 0, 0
    length = MIN_MATCH
    while i + length < len(played) and start + length < len(utterance) and \
            played[i + length] == utterance[start + length]:
        length += 1
    return start, length


def _quiet(ulaw: bytes) -> bool:
    return audioop.rms(audioop.ulaw2lin(ulaw, 2), 2) < QUIET_RMS
