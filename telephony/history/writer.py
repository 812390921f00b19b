"""The one task that writes the call history: rows are queued by the calls (never awaited on the
audio path) and written in batches, one transaction each.

A database that is down or slow costs the calls nothing: a batch that fails is retried with
back-off a bounded number of times, then dropped; rows that find the queue full are dropped at
once. Either way the count goes into a log line (and ``dropped``), never an exception into a call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from telephony.history.database import Database, describe_error, ensure_schema_in_background

if TYPE_CHECKING:  # SQLAlchemy (~16 MB) is imported with the first row
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("telephony.history")

QUEUE_LIMIT = 20_000  # rows waiting (a few hundred calls' worth): past it, rows are dropped
BATCH_MAX = 500  # rows per transaction
# Rows gather this long before a transaction: a transaction's fixed cost (a pool checkout, BEGIN,
# COMMIT, the driver's thread hops: ~0.5 ms of CPU) is paid twice a second, not once per turn
# (measured with benchmarks/load.py: written at once, 20 calls cost 0.07 % of a core more each).
BATCH_WAIT_S = 0.5
ATTEMPTS = 5  # per batch, the first included
BACKOFF_S = 0.5  # doubled after each failed attempt: 0.5 + 1 + 2 + 4 s before a batch is dropped
WRITE_TIMEOUT_S = 10.0  # one transaction; a database that hangs is a failed attempt
READ_TIMEOUT_S = 5.0  # the API's reads

T = TypeVar("T")


@dataclass(frozen=True)
class CallUpsert:
    """The call's row: inserted with ``values`` if absent, else ``update`` (column names) set from
    them, or ``increment`` a counter. Every upsert carries the row's required fields, so a call
    whose start was lost while the database was down still gets a row."""

    values: dict[str, Any]
    update: tuple[str, ...] = ()
    increment: str | None = None


@dataclass(frozen=True)
class TurnRow:
    values: dict[str, Any]


@dataclass(frozen=True)
class TurnUpdate:
    """A turn already recorded changed (an agent turn cut by the caller after its transcript was
    complete): ``values`` set on the turn (call_sid, stream_sid, seq)."""

    key: tuple[str, str, int]
    values: dict[str, Any]


@dataclass(frozen=True)
class EventRow:
    values: dict[str, Any]


Row = CallUpsert | TurnRow | TurnUpdate | EventRow


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0
    failed_attempts: int = 0


class HistoryWriter:
    def __init__(self, database: Database, queue_limit: int = QUEUE_LIMIT, attempts: int = ATTEMPTS,
                 backoff_s: float = BACKOFF_S, write_timeout_s: float = WRITE_TIMEOUT_S,
                 batch_wait_s: float = BATCH_WAIT_S) -> None:
        self.database = database
        self.batch_wait_s = batch_wait_s
        self.queue_limit = queue_limit
        self.attempts, self.backoff_s, self.write_timeout_s = attempts, backoff_s, write_timeout_s
        self.stats = WriterStats()
        self._queue: asyncio.Queue[Row] | None = None  # made, with the task, at the first row
        self._task: asyncio.Task | None = None
        self._engine: AsyncEngine | None = None
        self._migrated: asyncio.Lock | None = None
        self._ready = False
        self._preparing: concurrent.futures.Future[None] | None = None
        self._in_flight = 0
        self._outage = False  # a failure was logged; the next success says it is over
        self._dropped_in_outage = 0  # rows dropped since the last success: said once it is over

    def prepare(self) -> None:
        """Brings the schema up to date now, in a thread of its own (the app calls it when it is
        built): the first call's rows then find it ready instead of waiting on a migration."""
        self._preparing = ensure_schema_in_background(self.database)

    # --- The calls' side: never blocks, never raises ---

    def submit(self, row: Row) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._write_all(), name="call history writer")
        if self._queue.qsize() >= self.queue_limit:
            self._drop(1, f"the queue is full ({self.queue_limit} rows)")
            return
        self._queue.put_nowait(row)

    # --- The writer task ---

    async def _write_all(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            if queue.qsize() < BATCH_MAX:
                self._in_flight = 1  # gathering: flush() waits for this row too
                await asyncio.sleep(self.batch_wait_s)
            while len(batch) < BATCH_MAX and not queue.empty():
                batch.append(queue.get_nowait())
            self._in_flight = len(batch)
            try:
                await self._write_with_retries(batch)
            finally:
                self._in_flight = 0

    async def _write_with_retries(self, batch: list[Row]) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                await asyncio.wait_for(self._write(batch), self.write_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the driver raises: retried, then counted
                self.stats.failed_attempts += 1
                problem = describe_error(exc) if not isinstance(exc, asyncio.TimeoutError) else \
                    f"no answer within {self.write_timeout_s:g} s"
                if attempt == self.attempts:
                    self._drop(len(batch), f"{problem}, {attempt} attempts")
                    return
                if not self._outage:
                    self._outage = True
                    log.warning("call history: %s unavailable (%s); %d rows kept and retried",
                                self.database.describe(), problem, len(batch))
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self.stats.written += len(batch)
                if self._outage or self._dropped_in_outage:
                    log.warning("call history: %s writable again; %d rows were dropped meanwhile "
                                "(%d since start)", self.database.describe(), self._dropped_in_outage,
                                self.stats.dropped)
                self._outage, self._dropped_in_outage = False, 0
                return

    def _drop(self, count: int, why: str) -> None:
        """Counts dropped rows; logged at the first drop of an outage, at every power of ten of the
        total, and when the database is writable again (an outage of minutes is a few lines)."""
        self.stats.dropped += count
        total = self.stats.dropped
        if not self._dropped_in_outage or _crossed_power_of_ten(total - count, total):
            log.error("call history: %d rows not written (%s); %d dropped since start", count, why, total)
        self._dropped_in_outage += count

    async def _write(self, batch: list[Row]) -> None:
        from telephony.history import models

        engine = await self._ready_engine()
        upsert = _upsert(engine)
        turns = [row.values for row in batch if isinstance(row, TurnRow)]
        events = [row.values for row in batch if isinstance(row, EventRow)]
        async with engine.begin() as connection:
            for row in batch:  # in order: a call's start before its end
                if isinstance(row, CallUpsert):
                    await connection.execute(_call_statement(upsert, row))
            # A batch retried after a commit whose answer was lost: its rows are there already.
            if turns:
                await connection.execute(upsert(models.turns).on_conflict_do_nothing(), turns)
            for row in batch:  # after the inserts: a turn and its update may share a batch
                if isinstance(row, TurnUpdate):
                    await connection.execute(_turn_update(row))
            if events:
                await connection.execute(upsert(models.events).on_conflict_do_nothing(), events)

    async def _ready_engine(self) -> "AsyncEngine":
        if self._engine is None:
            self._engine = self.database.engine(pool_size=2, max_overflow=3) if not self.database.is_sqlite \
                else self.database.engine()
            self._migrated = asyncio.Lock()
        if not self._ready:
            async with self._migrated:  # the writer and a first API read may both get here
                if not self._ready:
                    preparing, self._preparing = self._preparing, None
                    if preparing is None:  # not prepared, or that failed: again, in a thread of its own
                        preparing = ensure_schema_in_background(self.database)
                    await asyncio.wrap_future(preparing)  # raises what the database raised
                    self._ready = True
        return self._engine

    # --- Reads (the API) ---

    async def read(self, query: Callable[["AsyncConnection"], Awaitable[T]]) -> T:
        """``query`` on a connection, bounded by READ_TIMEOUT_S; raises what the database raised."""
        async def run() -> T:
            engine = await self._ready_engine()
            async with engine.connect() as connection:
                return await query(connection)
        return await asyncio.wait_for(run(), READ_TIMEOUT_S)

    # --- Shutdown, and tests ---

    def pending(self) -> int:
        return (self._queue.qsize() if self._queue is not None else 0) + self._in_flight

    async def flush(self, timeout: float) -> int:
        """Waits (bounded) until every queued row is written or dropped; the number still pending."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        left = self.pending()
        if left:
            log.warning("call history: %d rows not written at shutdown", left)
        return left

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def _upsert(engine: "AsyncEngine"):
    """INSERT … ON CONFLICT, in the engine's dialect (both have it, each under its own name)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _turn_update(row: TurnUpdate):
    from telephony.history.models import turns

    call_sid, stream_sid, seq = row.key
    return turns.update().where(turns.c.call_sid == call_sid, turns.c.stream_sid == stream_sid,
                                turns.c.seq == seq).values(**row.values)


def _call_statement(upsert, row: CallUpsert):
    from telephony.history import models

    statement = upsert(models.calls).values(**row.values)
    if not row.update and not row.increment:
        return statement.on_conflict_do_nothing()
    if row.increment:
        column = models.calls.c[row.increment]
        return statement.on_conflict_do_update(index_elements=["call_sid"], set_={row.increment: column + 1})
    return statement.on_conflict_do_update(index_elements=["call_sid"],
                                           set_={name: statement.excluded[name] for name in row.update})


def _crossed_power_of_ten(before: int, after: int) -> bool:
    power = 10
    while power <= after:
        if before < power <= after:
            return True
        power *= 10
    return False
