"""Agent audio paced to real time, for dialects that cannot be told what the caller heard (Live).

Twilio plays whatever it has queued, and without truncate the model cannot be told where the
caller stopped listening, so the only honest barge-in is to keep Twilio's queue short and drop
the rest. The pacer holds agent audio and lets it out so that Twilio never has more than
``LEAD_MS`` queued (by the clock: Twilio plays at real time from the moment audio arrives),
in pieces of at most ``PIECE_MS`` so the queue stays close to the lead however large the model's
deltas are. On a barge-in the held audio is dropped and one ``clear`` empties Twilio's queue.
"""

from __future__ import annotations

import base64
from collections import deque

from telephony.core.audio import ULAW_BYTES_PER_MS, ModelAudio

LEAD_MS = 200.0  # Twilio's queue at most: what a caller may hear after a barge-in, worst case
PIECE_MS = 40  # held audio is cut into pieces this long (μ-law bytes: 8 per ms)


class AgentPacer:
    def __init__(self, lead_ms: float = LEAD_MS) -> None:
        self.lead_ms = lead_ms
        self._held: deque[tuple[str, ModelAudio]] = deque()  # (item, piece)
        self._played_by = 0.0  # when Twilio will have played everything released (our clock)

    def hold(self, item_id: str, chunk: ModelAudio) -> None:
        raw = base64.b64decode(chunk.payload)
        step = PIECE_MS * ULAW_BYTES_PER_MS
        if len(raw) <= step:
            self._held.append((item_id, chunk))
            return
        for i in range(0, len(raw), step):  # model ms shared out in proportion to the bytes
            piece = raw[i:i + step]
            self._held.append((item_id, ModelAudio(base64.b64encode(piece).decode("ascii"),
                                                   chunk.model_ms * len(piece) / len(raw))))

    def release(self, now: float) -> list[tuple[str, ModelAudio]]:
        """The held pieces Twilio can take now without queueing more than the lead."""
        out = []
        while self._held:
            ahead_ms = max(0.0, self._played_by - now) * 1000.0
            item, piece = self._held[0]
            piece_ms = len(piece.payload) * 3 / 4 / ULAW_BYTES_PER_MS
            if ahead_ms > 0 and ahead_ms + piece_ms > self.lead_ms:
                break
            self._held.popleft()
            self._played_by = max(self._played_by, now) + piece_ms / 1000.0
            out.append((item, piece))
        return out

    def queued(self, now: float) -> bool:
        """Agent audio is held here or still playing at Twilio (by the clock)."""
        return bool(self._held) or self._played_by > now

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def drop(self) -> float:
        """Forgets the held audio (Twilio's queue is cleared too); returns its length in ms."""
        dropped = sum(len(piece.payload) * 3 / 4 for _, piece in self._held) / ULAW_BYTES_PER_MS
        self._held.clear()
        self._played_by = 0.0
        return dropped
