"""Transcript delivery: each turn, as it completes, goes to live feeds and a webhook.

Nothing here may slow the audio path: ``publish`` only puts into queues. The webhook worker
posts turns one at a time, in order, retrying with back-off; a slow or failing receiver delays
only later deliveries, never a call. Live feeds are per instance: a feed is served by the
instance that carries the call's stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, AsyncIterator

import httpx

log = logging.getLogger("telephony.transcripts")

WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 5
WEBHOOK_BACKOFF_S = 0.5  # doubled after each failed attempt
QUEUE_LIMIT = 10_000


class TranscriptHub:
    def __init__(self, webhook_url: str | None = None) -> None:
        self.webhook_url = webhook_url
        self._turns: dict[str, list[dict[str, Any]]] = {}  # calls in progress on this instance
        self._feeds: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self._outbox: asyncio.Queue[dict[str, Any]] | None = None
        self._worker: asyncio.Task | None = None

    def begin(self, call_sid: str) -> None:
        self._turns.setdefault(call_sid, [])

    def publish(self, call_sid: str, turn: dict[str, Any]) -> None:
        turns = self._turns.setdefault(call_sid, [])
        turn = {"call_sid": call_sid, "seq": len(turns) + 1, **turn}
        turns.append(turn)
        for feed in self._feeds.get(call_sid, ()):
            feed.put_nowait(turn)
        if self.webhook_url:
            self._deliver(turn)

    def end(self, call_sid: str) -> None:
        self._turns.pop(call_sid, None)
        for feed in self._feeds.pop(call_sid, ()):
            feed.put_nowait(None)

    def active(self, call_sid: str) -> bool:
        return call_sid in self._turns

    async def follow(self, call_sid: str) -> AsyncIterator[dict[str, Any]]:
        """The turns so far, then each new one, until the call ends."""
        feed: asyncio.Queue = asyncio.Queue()
        for turn in self._turns.get(call_sid, ()):
            feed.put_nowait(turn)
        self._feeds[call_sid].add(feed)
        try:
            while (turn := await feed.get()) is not None:
                yield turn
        finally:
            feeds = self._feeds.get(call_sid)
            if feeds is not None:
                feeds.discard(feed)

    # --- webhook ---

    def _deliver(self, turn: dict[str, Any]) -> None:
        if self._outbox is None:
            self._outbox = asyncio.Queue(QUEUE_LIMIT)
            self._worker = asyncio.create_task(self._post_all())
        try:
            self._outbox.put_nowait(turn)
        except asyncio.QueueFull:
            log.error("call %s: transcript webhook is %d turns behind; turn %d dropped",
                      turn["call_sid"], QUEUE_LIMIT, turn["seq"])

    async def _post_all(self) -> None:
        async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S) as client:
            while True:
                turn = await self._outbox.get()
                await self._post(client, turn)
                self._outbox.task_done()

    async def _post(self, client: httpx.AsyncClient, turn: dict[str, Any]) -> None:
        delay = WEBHOOK_BACKOFF_S
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                response = await client.post(self.webhook_url, json=turn)
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break  # the receiver refuses this turn; retrying will not change its mind
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt < WEBHOOK_ATTEMPTS:
                log.warning("call %s: transcript webhook failed (%s), attempt %d; retrying in %.1f s",
                            turn["call_sid"], problem, attempt, delay)
                await asyncio.sleep(delay)
                delay *= 2
        log.error("call %s: transcript turn %d not delivered: %s", turn["call_sid"], turn["seq"], problem)

    async def drain(self, timeout: float) -> None:
        """Waits (bounded) for queued webhook deliveries, e.g. at shutdown."""
        if self._outbox is not None:
            try:
                await asyncio.wait_for(self._outbox.join(), timeout)
            except asyncio.TimeoutError:
                log.warning("transcript webhook: %d turns undelivered at shutdown", self._outbox.qsize())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
