"""What a caller on a Live SIP call has heard: the session clock from the sideband's reflections.

On SIP, OpenAI plays the agent itself; its Live sideband reflects each stretch of agent audio with
its place on the session's timeline (``start_ms``/``end_ms``), and there is no "playback stopped"
event. The goodbye has been heard once the session clock has passed the last reflected
``end_ms``, not when the reflections pause (dropped frames leave gaps between ranges).

The session clock is not sent either: it is estimated from arrivals. Something about session time
``t_ms`` cannot arrive before the session reached ``t_ms``, so each arrival bounds the session's
origin from above (``arrival - t_ms``), and the smallest bound so far is the estimate. If OpenAI
reflects audio ahead of playout, the estimate runs early; that is unverified (PROTOCOLS.md), and
``MARGIN_MS`` is the slack for a jitter buffer on the SIP side.
"""

from __future__ import annotations

MARGIN_MS = 300.0


class ReflectedPlayout:
    def __init__(self) -> None:
        self._origin: float | None = None  # local time (s) of session time 0
        self.last_end_ms: int | None = None  # the end of the latest agent audio reflected
        self.last_reflected_at: float | None = None  # local time of that reflection

    def clock(self, session_ms: int, now: float) -> None:
        """Something about session time ``session_ms`` arrived at local time ``now``."""
        origin = now - session_ms / 1000
        if self._origin is None or origin < self._origin:
            self._origin = origin

    def reflected(self, start_ms: int, end_ms: int, now: float) -> None:
        self.clock(start_ms, now)
        self.last_end_ms = end_ms if self.last_end_ms is None else max(self.last_end_ms, end_ms)
        self.last_reflected_at = now

    def session_ms(self, now: float) -> float | None:
        """The session clock now, or None before anything timed arrived."""
        return None if self._origin is None else (now - self._origin) * 1000

    def playing(self, now: float) -> bool:
        """Agent audio reflected but not yet played out (by the session clock)."""
        position = self.session_ms(now)
        return self.last_end_ms is not None and position is not None and position < self.last_end_ms + MARGIN_MS
