"""How many calls this process takes on, and how it lets them go when it is told to stop."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("telephony.limits")

END_TIMEOUT_S = 2.0  # after being told to end, a call closes its sockets within ~1 s


class Endable(Protocol):
    def end(self, reason: str) -> None: ...


class CallRegistry:
    """The calls in progress; admits new ones while under the limit and not draining."""

    def __init__(self, max_calls: int = 0) -> None:
        self.max_calls = max_calls  # 0: no limit
        self.draining = False
        self._calls: set[Endable] = set()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._calls)

    def accepting(self) -> str | None:
        """None when a new call may start; else why not."""
        if self.draining:
            return "shutting down"
        if self.max_calls and len(self._calls) >= self.max_calls:
            return f"at the limit of {self.max_calls} concurrent calls"
        return None

    def add(self, call: Endable) -> None:
        self._calls.add(call)

    def discard(self, call: Endable) -> None:
        self._calls.discard(call)
        self._changed.set()

    async def _until_empty(self) -> None:
        while self._calls:
            self._changed.clear()
            await self._changed.wait()

    async def drain(self, grace_s: float) -> None:
        """Refuses new calls, waits up to ``grace_s`` for these to finish, then ends the rest."""
        self.draining = True
        if self._calls:
            log.info("shutting down: waiting up to %g s for %d call(s)", grace_s, len(self._calls))
        try:
            await asyncio.wait_for(self._until_empty(), grace_s)
            return
        except asyncio.TimeoutError:
            pass
        log.warning("shutting down: ending %d call(s) still in progress", len(self._calls))
        for call in list(self._calls):
            call.end("the service is shutting down")
        try:
            await asyncio.wait_for(self._until_empty(), END_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error("shutting down: %d call(s) did not end in time", len(self._calls))
