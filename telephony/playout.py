"""The playout ledger: what the caller has actually heard of each agent item.

Every chunk of agent audio sent to Twilio is followed by a mark. Twilio echoes a mark when
playback reaches it, so an echoed mark proves the caller heard the chunk before it. Between
echoes Twilio plays at real time, so the position inside the chunk now playing is the time
since it started (clamped to the chunk), which keeps truncation within a frame however large
the model's audio deltas are. Marks echoed because we sent ``clear`` are not proof of
anything: ``clear()`` forgets every pending mark, so their echoes are unknown and ignored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class _Chunk:
    mark: str
    item_id: str
    start_ms: float  # position in the item where this chunk starts, on the model's clock
    end_ms: float


class PlayoutLedger:
    def __init__(self) -> None:
        self._pending: deque[_Chunk] = deque()
        self._heard: dict[str, float] = {}  # item → ms proven heard by echoed marks
        self._sent: dict[str, float] = {}  # item → ms sent to Twilio
        self._head_started: float | None = None  # when the head chunk began playing
        self._seq = 0

    def sent(self, item_id: str, duration_ms: float, now: float) -> str:
        """Records a chunk sent to Twilio; returns the name of the mark to send after it."""
        start = self._sent.get(item_id, 0.0)
        self._sent[item_id] = start + duration_ms
        self._seq += 1
        name = f"{self._seq}"
        if not self._pending:
            self._head_started = now  # Twilio's buffer was empty: this plays at once
        self._pending.append(_Chunk(name, item_id, start, start + duration_ms))
        return name

    def issued(self, name: str) -> bool:
        """Whether ``name`` is a mark this ledger handed out (pending or not)."""
        return name.isdigit() and 0 < int(name) <= self._seq

    def echoed(self, name: str, now: float) -> bool:
        """A mark came back. False if it is not one we are waiting for."""
        if not any(chunk.mark == name for chunk in self._pending):
            return False
        while self._pending:
            chunk = self._pending.popleft()
            self._heard[chunk.item_id] = chunk.end_ms
            if chunk.mark == name:
                break
        self._head_started = now if self._pending else None
        return True

    def heard_ms(self, item_id: str, now: float) -> float:
        """Milliseconds of the item the caller has heard, never more than was sent."""
        heard = self._heard.get(item_id, 0.0)
        if self._pending and self._head_started is not None:
            head = self._pending[0]
            if head.item_id == item_id:
                playing = max(0.0, (now - self._head_started) * 1000.0)
                heard = max(heard, head.start_ms + min(playing, head.end_ms - head.start_ms))
        return min(heard, self._sent.get(item_id, 0.0))

    def sent_ms(self, item_id: str) -> float:
        return self._sent.get(item_id, 0.0)

    @property
    def playing_item(self) -> str | None:
        """The item whose audio the caller is hearing now, if any is unplayed."""
        return self._pending[0].item_id if self._pending else None

    @property
    def unplayed(self) -> bool:
        return bool(self._pending)

    @property
    def pending_marks(self) -> int:
        return len(self._pending)

    def clear(self) -> None:
        """Twilio's buffer was dropped: whatever was pending was never heard."""
        self._pending.clear()
        self._head_started = None

    def forget(self, item_id: str) -> None:
        self._heard.pop(item_id, None)
        self._sent.pop(item_id, None)
