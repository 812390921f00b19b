"""Claims: a name that one holder at a time may use, such as "this token has opened its stream"
or "a stream is serving this call".

``Claims`` is the interface; ``LocalClaims`` keeps them in this process. A shared store backs the
same interface across instances (with Redis: ``SET key <holder> NX PX ttl`` to claim, a
compare-and-delete to release).

A claim answers with its holder's token (truthy) or "" when the key is taken. Releasing with that
token frees the key only while that holder still has it: a stream that ends after it gave its call
up (a handoff) must not free the claim its successor has just taken.
"""

from __future__ import annotations

import secrets
import time
from typing import Callable, Protocol


class Claims(Protocol):
    async def claim(self, key: str, ttl_s: float) -> str:
        """A token (truthy) if ``key`` was free and is now held for ``ttl_s`` seconds (or until
        released); "" while someone holds it."""
        ...

    async def release(self, key: str, token: str | None = None) -> None:
        """Frees ``key`` if ``token`` still holds it (no token: whoever in this process holds it);
        a no-op otherwise."""
        ...


class LocalClaims:
    """Claims held in this process's memory; expired ones are swept as new ones arrive."""

    SWEEP_EVERY = 256  # claims between sweeps of the expired ones

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[str, tuple[float, str]] = {}  # key → (when it expires on the clock, holder's token)
        self._clock = clock
        self._since_sweep = 0

    def __len__(self) -> int:
        return len(self._held)

    async def claim(self, key: str, ttl_s: float) -> str:
        now = self._clock()
        self._sweep(now)
        held = self._held.get(key)
        if held is not None and held[0] > now:
            return ""
        token = secrets.token_hex(8)
        self._held[key] = (now + ttl_s, token)
        return token

    async def release(self, key: str, token: str | None = None) -> None:
        held = self._held.get(key)
        if held is not None and (token is None or held[1] == token):
            del self._held[key]

    def holder(self, key: str) -> str | None:
        """The token holding ``key`` now, if any."""
        held = self._held.get(key)
        return held[1] if held is not None and held[0] > self._clock() else None

    def _sweep(self, now: float) -> None:
        self._since_sweep += 1
        if self._since_sweep >= self.SWEEP_EVERY:
            self._since_sweep = 0
            self._held = {k: v for k, v in self._held.items() if v[0] > now}
