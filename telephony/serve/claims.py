"""Claims: a name that one holder at a time may use, such as "this token has opened its stream"
or "a stream is serving this call".

``Claims`` is the interface; ``LocalClaims`` keeps them in this process. A shared store backs the
same interface across instances (with Redis: ``SET key 1 NX PX ttl`` to claim, ``DEL`` to release).
"""

from __future__ import annotations

import time
from typing import Callable, Protocol


class Claims(Protocol):
    async def claim(self, key: str, ttl_s: float) -> bool:
        """True if ``key`` was free, and is now held for ``ttl_s`` seconds (or until released);
        False while someone holds it."""
        ...

    async def release(self, key: str) -> None:
        """Frees ``key`` (a no-op if it is not held)."""
        ...


class LocalClaims:
    """Claims held in this process's memory; expired ones are swept as new ones arrive."""

    SWEEP_EVERY = 256  # claims between sweeps of the expired ones

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[str, float] = {}  # key → when it expires (clock)
        self._clock = clock
        self._since_sweep = 0

    def __len__(self) -> int:
        return len(self._held)

    async def claim(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        self._sweep(now)
        expires = self._held.get(key)
        if expires is not None and expires > now:
            return False
        self._held[key] = now + ttl_s
        return True

    async def release(self, key: str) -> None:
        self._held.pop(key, None)

    def _sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep >= self.SWEEP_EVERY:
            self._since_sweep = 0
            self._held = {k: t for k, t in self._held.items() if t > now}
