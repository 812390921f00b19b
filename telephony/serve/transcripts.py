"""Transcript delivery: each turn, as it completes, goes to live feeds and a webhook.

Nothing here may slow the audio path: ``publish`` only puts into queues. The webhook worker
posts turns one at a time, in order, retrying with back-off; a slow or failing receiver delays
only later deliveries, never a call. Live feeds follow the shared state: this process's calls, or
with REDIS_URL every instance's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

import httpx

from telephony.serve.shared_state import END, LocalState, RedisState

log = logging.getLogger("telephony.transcripts")

WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 5
WEBHOOK_BACKOFF_S = 0.5  # doubled after each failed attempt
QUEUE_LIMIT = 10_000


class TranscriptHub:
    def __init__(self, webhook_url: str | None = None, state: LocalState | RedisState | None = None) -> None:
        self.webhook_url = webhook_url
        self.state = state or LocalState()  # where feeds follow turns: this process, or all (Redis)
        self._turns: dict[str, list[dict[str, Any]]] = {}  # calls in progress on this instance
        self._outbox: asyncio.Queue[dict[str, Any]] | None = None
        self._worker: asyncio.Task | None = None

    def begin(self, call_sid: str) -> None:
        """A call's stream starts here."""
        if call_sid not in self._turns:
            self._turns[call_sid] = []
            self.state.open_stream(call_sid)

    def carry_on(self, call_sid: str, earlier: list[dict[str, Any]]) -> None:
        """A handed-over call: its turns before the handoff, so seq goes on from them."""
        self._turns[call_sid] = list(earlier) + self._turns.get(call_sid, [])

    def publish(self, call_sid: str, turn: dict[str, Any]) -> None:
        turns = self._turns.setdefault(call_sid, [])
        turn = {"call_sid": call_sid, "seq": len(turns) + 1, **turn}
        turns.append(turn)
        self.state.append(call_sid, turn)
        if self.webhook_url:
            self._deliver(turn)

    def turns(self, call_sid: str) -> list[dict[str, Any]]:
        return list(self._turns.get(call_sid, ()))

    def end(self, call_sid: str, handed_over: bool = False) -> None:
        """The stream ended here; unless the call was handed to another stream, so did the call."""
        self._turns.pop(call_sid, None)
        if not handed_over:
            self.state.append(call_sid, END)

    def active(self, call_sid: str) -> bool:
        """The call is in progress on this instance."""
        return call_sid in self._turns

    async def followable(self, call_sid: str) -> bool:
        """The call is in progress here, or (with Redis) on any instance: its feed can be followed."""
        return self.active(call_sid) or await self.state.stream_open(call_sid)

    def follow(self, call_sid: str) -> AsyncIterator[dict[str, Any]]:
        """The turns so far, then each new one, until the call ends (on whichever instance)."""
        return self.state.follow(call_sid)

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

    async def drain(self, timeout: float) -> int:
        """Waits (bounded) for queued webhook deliveries, e.g. at shutdown; the number left undelivered."""
        if self._outbox is not None:
            try:
                await asyncio.wait_for(self._outbox.join(), timeout)
            except asyncio.TimeoutError:
                left = self._outbox.qsize() + 1  # and the one being posted
                log.warning("transcript webhook: %d turns undelivered at shutdown", left)
                return left
        return 0

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
