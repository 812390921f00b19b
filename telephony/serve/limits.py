"""How many calls this process takes on, and how it lets them go when it is told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable, Protocol

log = logging.getLogger("telephony.limits")

END_TIMEOUT_S = 2.0  # after being told to end, a call closes its sockets within ~1 s
HANDOFF_BUDGET_S = 3.0  # of the grace, kept for handing calls over (state saved, Twilio told)
HURRY_POLL_S = 0.1  # how often a drain looks for a second Ctrl-C


class Endable(Protocol):
    def end(self, reason: str) -> None: ...


class CallRegistry:
    """The calls in progress; admits new ones while under the limit and not draining."""

    def __init__(self, max_calls: int = 0) -> None:
        self.max_calls = max_calls  # 0: no limit
        self.draining = False
        self._calls: set[Endable] = set()
        self._reserved = 0  # places held for calls about to start (reserve())
        self._changed = asyncio.Event()
        # Set when calls can be moved to another instance at shutdown (serve/handoff.py): True if moved.
        self.hand_over: Callable[[Endable], Awaitable[bool]] | None = None
        # Set when calls without media can be left for another instance (serve/sip_parking.py):
        # done at once, since such a call loses nothing by moving and gains nothing by waiting.
        self.park: Callable[[Endable], Awaitable[bool]] | None = None

    def __len__(self) -> int:
        return len(self._calls)

    def accepting(self) -> str | None:
        """None when a new call may start; else why not."""
        if self.draining:
            return "shutting down"
        if self.max_calls and len(self._calls) + self._reserved >= self.max_calls:
            return f"at the limit of {self.max_calls} concurrent calls"
        return None

    def reserve(self) -> "Place | None":
        """A place for a call about to start, held before anything is awaited for it (OpenAI's
        accept) so that a burst of calls cannot overshoot the limit; None when there is none
        (``accepting()`` says why)."""
        if self.accepting() is not None:
            return None
        self._reserved += 1
        return Place(self)

    def add(self, call: Endable) -> None:
        self._calls.add(call)

    def discard(self, call: Endable) -> None:
        self._calls.discard(call)
        self._changed.set()

    def _give_back(self) -> None:
        self._reserved -= 1

    async def _until_empty_or(self, hurry: Callable[[], bool]) -> None:
        while self._calls and not hurry():
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), HURRY_POLL_S)

    async def _until_empty(self) -> None:
        while self._calls:
            self._changed.clear()
            await self._changed.wait()

    async def drain(self, grace_s: float, hurry: Callable[[], bool] = lambda: False) -> None:
        """Refuses new calls, waits up to ``grace_s`` for these to finish, then hands the rest over
        (when it can: the last HANDOFF_BUDGET_S of the grace is kept for that) or ends them.
        ``hurry`` (polled; a second Ctrl-C): True ends them at once, without waiting for them to close."""
        self.draining = True
        if self.park is not None and self._calls and not hurry():
            parked = await asyncio.gather(*(asyncio.wait_for(self.park(call), HANDOFF_BUDGET_S)
                                            for call in list(self._calls)), return_exceptions=True)
            if n := sum(ok is True for ok in parked):
                log.info("shutting down: %d SIP call(s) left for another instance", n)
        wait_s = grace_s if self.hand_over is None else max(0.0, grace_s - HANDOFF_BUDGET_S)
        if self._calls:
            log.info("shutting down: waiting up to %g s for %d call(s)", wait_s, len(self._calls))
        try:
            await asyncio.wait_for(self._until_empty_or(hurry), wait_s)
        except asyncio.TimeoutError:
            pass
        if not self._calls:
            return
        remaining = list(self._calls)
        if self.hand_over is not None and not hurry():
            log.info("shutting down: handing %d call(s) over", len(remaining))
            moved = await asyncio.gather(*(asyncio.wait_for(self.hand_over(call), HANDOFF_BUDGET_S)
                                           for call in remaining), return_exceptions=True)
            remaining = [call for call, ok in zip(remaining, moved) if ok is not True]
        if remaining:
            log.warning("shutting down: ending %d call(s) still in progress", len(remaining))
        for call in remaining:
            call.end("the service is shutting down")
        if hurry():
            return
        try:  # a handed-over call leaves when Twilio stops its stream
            await asyncio.wait_for(self._until_empty(), END_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error("shutting down: %d call(s) did not end in time", len(self._calls))


class Place:
    """A place held under the limit (``CallRegistry.reserve``): a call fills it, or it is given back."""

    def __init__(self, registry: CallRegistry) -> None:
        self._registry: CallRegistry | None = registry

    def fill(self, call: Endable) -> None:
        """The call takes the place: from now on it counts as a call in progress."""
        registry = self._registry
        self.release()
        if registry is not None:
            registry.add(call)

    def release(self) -> None:
        """Gives the place back; a no-op once filled or released."""
        if self._registry is not None:
            self._registry._give_back()
            self._registry = None
