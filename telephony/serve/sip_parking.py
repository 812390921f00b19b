"""SIP calls survive a deploy: where a stopping instance leaves the calls it steered.

On OpenAI's SIP route no audio passes through us: OpenAI carries the call, and we only steer it
over a sideband websocket that anyone holding the call's id (and the project's key) may attach.
So a stopping instance does not end these calls: it closes its sideband (which detaches only
it) and parks each call here, with what another instance needs to steer it on (engine, id,
profile, transcript so far, tools still running, whether the greeting was asked for). Every
instance watches the lot (``ADOPT_POLL_S``) and takes what it finds: each parked call is taken
by exactly one.

Two lots:
- ``QueueLot``: the shared state's queue (with REDIS_URL: a Redis list, taken by an atomic LPOP).
- ``FileLot``: a directory (STATE_DIR) without Redis: one JSON file per call, taken by an atomic
  rename, so a single instance re-attaches after its own restart (and workers sharing the
  directory each take different calls).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from telephony.serve.shared_state import LocalState, RedisState

log = logging.getLogger("telephony.sip_parking")

QUEUE = "sip_parked"
ADOPT_POLL_S = 0.5  # how often an instance looks for parked calls: a parked call waits about this long
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


class Lot(Protocol):
    async def park(self, record: dict[str, Any]) -> bool:
        """Leaves a call for another instance; False when it could not be stored."""
        ...

    async def take(self) -> dict[str, Any] | None:
        """One parked call, now this instance's alone; None when there is none."""
        ...


def expired(record: dict[str, Any], now: float | None = None) -> bool:
    return float(record.get("expires_at", 0)) < (time.time() if now is None else now)


class QueueLot:
    """The shared state's queue: across instances with Redis."""

    def __init__(self, state: LocalState | RedisState, ttl_s: float) -> None:
        self.state, self.ttl_s = state, ttl_s

    async def park(self, record: dict[str, Any]) -> bool:
        return await self.state.push(QUEUE, record, self.ttl_s)

    async def take(self) -> dict[str, Any] | None:
        while (record := await self.state.pop(QUEUE)) is not None:
            if not expired(record):
                return record
            log.warning("call %s: parked too long ago; left to OpenAI", record.get("call_id"))
        return None


class FileLot:
    """A directory of parked calls, one JSON file each: survives this process's restart."""

    def __init__(self, directory: Path, ttl_s: float) -> None:
        self.directory, self.ttl_s = Path(directory), ttl_s
        self._taker = f"{os.getpid()}"

    async def park(self, record: dict[str, Any]) -> bool:
        name = _SAFE_ID.sub("_", str(record.get("call_id", "")))[:120] or "call"
        path = self.directory / f"sip-{name}.json"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{self._taker}.partial")
            partial.write_bytes(orjson.dumps(record))
            os.replace(partial, path)  # whole or not at all: a taker never reads half a file
        except OSError as exc:
            log.error("call %s: cannot park it in %s: %s", record.get("call_id"), self.directory, exc)
            return False
        return True

    async def take(self) -> dict[str, Any] | None:
        try:
            found = sorted(self.directory.glob("sip-*.json"))
        except OSError:
            return None
        for path in found:
            mine = path.with_suffix(f".{self._taker}.taken")
            try:
                os.rename(path, mine)  # atomic: of two takers, one gets it and the other a FileNotFoundError
            except OSError:
                continue
            try:
                record = orjson.loads(mine.read_bytes())
            except (OSError, ValueError) as exc:
                log.error("parked call %s unreadable: %s", path.name, exc)
                continue
            finally:
                mine.unlink(missing_ok=True)
            if not expired(record):
                return record
            log.warning("call %s: parked too long ago; left to OpenAI", record.get("call_id"))
        return None


def make_lot(state: LocalState | RedisState, state_dir: Path | None, ttl_s: float) -> Lot | None:
    """Redis when it is shared, else STATE_DIR; None (no lot: SIP calls are hung up at shutdown)."""
    if state.shared:
        return QueueLot(state, ttl_s)
    if state_dir is not None:
        return FileLot(state_dir, ttl_s)
    return None


async def watch(lot: Lot, ready, adopt, poll_s: float = ADOPT_POLL_S) -> None:
    """Takes parked calls while ``ready()`` (not draining, under the limit) and hands each to
    ``adopt(record)`` (async), which answers False when it could not take it after all: the
    record is then parked again for another instance."""
    while True:
        try:
            while ready() and (record := await lot.take()) is not None:
                if not await adopt(record):
                    await lot.park(record)
                    break
        except Exception:  # one bad record must not stop the watch
            log.exception("adopting a parked SIP call failed")
        await asyncio.sleep(poll_s)
