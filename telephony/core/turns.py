"""Transcript fragments on a session timeline grouped into turns (Live has no items or "done").

Each fragment carries ``start_ms``/``end_ms``. A speaker's turn ends when the other speaker
starts after it, when the same speaker resumes after a pause longer than ``TURN_GAP_MS``, when
that much of the timeline passes in silence (``due``), or when the call ends (``flush``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TURN_GAP_MS = 700  # a pause this long between one speaker's fragments ends the turn


@dataclass
class Turn:
    speaker: str
    start_ms: int
    end_ms: int
    parts: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()


class TurnGrouper:
    def __init__(self) -> None:
        self._open: dict[str, Turn] = {}

    def add(self, speaker: str, delta: str, start_ms: int, end_ms: int) -> list[Turn]:
        """One fragment; returns the turns it closes."""
        closed = []
        for other, turn in list(self._open.items()):
            if (other != speaker and start_ms >= turn.end_ms) or (
                    other == speaker and start_ms - turn.end_ms > TURN_GAP_MS):
                closed.append(self._open.pop(other))
        turn = self._open.get(speaker)
        if turn is None:
            turn = self._open[speaker] = Turn(speaker, start_ms, end_ms)
        turn.parts.append(delta)
        turn.end_ms = max(turn.end_ms, end_ms)
        return closed

    def due(self, position_ms: float) -> list[Turn]:
        """Turns followed by ``TURN_GAP_MS`` of silence, ``position_ms`` being the timeline now."""
        done = [s for s, turn in self._open.items() if position_ms - turn.end_ms > TURN_GAP_MS]
        return [self._open.pop(s) for s in done]

    def interrupt(self, speaker: str) -> None:
        """The open turn of ``speaker`` was cut short (the caller talked over the agent)."""
        if speaker in self._open:
            self._open[speaker].interrupted = True

    def flush(self) -> list[Turn]:
        turns = sorted(self._open.values(), key=lambda t: t.start_ms)
        self._open.clear()
        return turns
