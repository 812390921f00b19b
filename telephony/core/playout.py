"""The playout ledger: what the caller has actually heard of each agent item.

Agent audio sent to Twilio is followed by a mark once at least ``MARK_EVERY_MS`` of it has
gone out, when the item ends, or when the model pauses (``due``). Twilio echoes a mark when
playback reaches it, so an echoed mark proves the caller heard the audio before it. A mark
per 100 ms rather than per model delta (often 20-40 ms) saves two of every three marks and
their echoes, a fifth of a call's websocket messages, and costs no accuracy (below). Between
echoes Twilio plays at real time, so the position inside the chunk now playing is the time
since it started (clamped to the chunk), which keeps truncation within a frame however large
the model's audio deltas are. Marks echoed because we sent ``clear`` are not proof of
anything: ``clear()`` forgets every pending mark, so their echoes are unknown and ignored.

Each pending chunk keeps the payloads sent in it (references to strings already made, no
copy), so a barge-in that turns out to be a backchannel can take back exactly the audio the
caller has not heard (``take_unheard``) and send it again: nothing skipped, nothing repeated.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field

MARK_EVERY_MS = 100.0  # audio between marks while the model streams
MARK_QUIET_S = 0.06  # a model silent this long gets the mark for what it sent


@dataclass
class _Chunk:
    mark: str | None  # None: the open chunk, still growing, its mark not sent yet
    item_id: str
    start_ms: float  # position in the item where this chunk starts, on the model's clock
    end_ms: float
    payloads: list[str] = field(default_factory=list)  # base64 μ-law sent in this chunk, in order


@dataclass(frozen=True)
class Unheard:
    """Audio of one item sent to Twilio and dropped by a clear before the caller heard it."""

    item_id: str
    payload: str  # base64 μ-law
    ms: float  # its length on the model's clock


class PlayoutLedger:
    def __init__(self) -> None:
        self._pending: deque[_Chunk] = deque()
        self._heard: dict[str, float] = {}  # item → ms proven heard by echoed marks
        self._sent: dict[str, float] = {}  # item → ms sent to Twilio
        self._head_started: float | None = None  # when the head chunk began playing
        self._last_sent_at = 0.0
        self._seq = 0

    def before(self, item_id: str) -> str | None:
        """Call before sending audio of ``item_id``: the mark to send first, if the open chunk
        belongs to another item (a chunk is one item's, so heard ms stay per item)."""
        if self._pending and self._pending[-1].mark is None and self._pending[-1].item_id != item_id:
            return self.seal()
        return None

    def sent(self, item_id: str, duration_ms: float, now: float, payload: str = "") -> str | None:
        """Records audio sent to Twilio; returns the name of a mark to send after it, if due."""
        start = self._sent.get(item_id, 0.0)
        self._sent[item_id] = start + duration_ms
        self._last_sent_at = now
        if not self._pending:
            self._head_started = now  # Twilio's buffer was empty: this plays at once
        if self._pending and self._pending[-1].mark is None and self._pending[-1].item_id == item_id:
            self._pending[-1].end_ms += duration_ms
        else:
            self._pending.append(_Chunk(None, item_id, start, start + duration_ms))
        open_chunk = self._pending[-1]
        if payload:
            open_chunk.payloads.append(payload)
        return self.seal() if open_chunk.end_ms - open_chunk.start_ms >= MARK_EVERY_MS else None

    def seal(self) -> str | None:
        """Closes the open chunk: returns the mark to send after it (None if there is none)."""
        if not self._pending or self._pending[-1].mark is not None:
            return None
        self._seq += 1
        self._pending[-1].mark = f"{self._seq}"
        return self._pending[-1].mark

    def due(self, now: float) -> str | None:
        """The open chunk's mark, once the model has sent nothing for ``MARK_QUIET_S``."""
        if now - self._last_sent_at >= MARK_QUIET_S:
            return self.seal()
        return None

    def issued(self, name: str) -> bool:
        """Whether ``name`` is a mark this ledger handed out (pending or not)."""
        # ASCII digits only ('²' makes int() raise), and no longer than ours: int() refuses 4,300+ digits.
        return (name.isascii() and name.isdigit() and len(name) <= len(str(self._seq))
                and 0 < int(name) <= self._seq)

    def echoed(self, name: str, now: float) -> bool:
        """A mark came back. False if it is not one we are waiting for."""
        if not name or not any(chunk.mark == name for chunk in self._pending):
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

    def unplayed_items(self) -> list[str]:
        """The items with audio not yet played, in the order Twilio plays them."""
        return list(dict.fromkeys(chunk.item_id for chunk in self._pending))

    def take_unheard(self, now: float) -> list[Unheard]:
        """Twilio's buffer is being dropped (a pause): the audio it held that the caller has not
        heard, in play order, the first piece cut where playback is now. Each item's sent count
        goes back to what was heard, so sending these again continues the item where it stopped."""
        unheard: list[Unheard] = []
        rewound: set[str] = set()
        for chunk in self._pending:
            cut_ms = chunk.start_ms
            if chunk is self._pending[0]:  # playing now: cut where playback is
                cut_ms = max(chunk.start_ms, min(self.heard_ms(chunk.item_id, now), chunk.end_ms))
            if chunk.item_id not in rewound:
                rewound.add(chunk.item_id)
                self._sent[chunk.item_id] = cut_ms
            piece = _tail(chunk, cut_ms)
            if piece is not None:
                unheard.append(piece)
        self.clear()
        return unheard

    def clear(self) -> None:
        """Twilio's buffer was dropped: whatever was pending was never heard."""
        self._pending.clear()
        self._head_started = None

    def forget(self, item_id: str) -> None:
        self._heard.pop(item_id, None)
        self._sent.pop(item_id, None)


def _tail(chunk: _Chunk, from_ms: float) -> Unheard | None:
    """The part of ``chunk`` from ``from_ms`` (on its item's clock) to its end; μ-law is one byte
    per sample, so the cut is exact to the sample (the byte count is proportional to time)."""
    length = chunk.end_ms - chunk.start_ms
    if length <= 0 or from_ms >= chunk.end_ms or not chunk.payloads:
        return None
    if from_ms <= chunk.start_ms and len(chunk.payloads) == 1:
        return Unheard(chunk.item_id, chunk.payloads[0], length)
    audio = b"".join(base64.b64decode(p) for p in chunk.payloads)
    skip = round(len(audio) * (from_ms - chunk.start_ms) / length)
    return Unheard(chunk.item_id, base64.b64encode(audio[skip:]).decode("ascii"), chunk.end_ms - from_ms)
