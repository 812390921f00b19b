"""Live state that instances share: calls in progress, claims, handoffs and transcript streams.

Two implementations of one small interface: ``LocalState`` (in-process, the default; one
instance sees its own calls) and ``RedisState`` (REDIS_URL; every instance sees every call).
Nothing on a call's audio path awaits either: ``append`` only queues, and every Redis operation
that fails logs one warning per outage and answers as if the state were empty, so calls go on
while Redis is down and feeds pick up where they were when it is back.

Claims (``claim(key, ttl_s)`` → bool, ``release(key)``) give one holder per key across
instances, with a TTL so a crashed holder's claim lapses: e.g. one stream per token or call sid.

A Redis that hangs (a failover, a partition: connections accepted, nothing answered) must cost a
call no more than a short wait: every operation has a deadline (REDIS_TIMEOUT_SECONDS), the first
one that misses it marks Redis down, and while it is down operations are skipped at once (their
default answer) while a background probe pings it and marks it up again. Claims are also taken in
this process first, so replay protection holds on each instance while Redis is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections import defaultdict
from typing import Any, AsyncIterator

import orjson

from telephony.serve.claims import LocalClaims

log = logging.getLogger("telephony.shared_state")

END = {"end": True}  # a stream's last item: its call is over
CALL_TTL_S = 15.0  # a call's entry lapses this long after its instance stops refreshing it
REFRESH_S = 5.0
FEED_CHECK_S = 5.0  # a follower re-reads its feed and checks its call is still somewhere this often
RESERVATION_TTL_S = 30.0  # a webhook's admission, until its stream starts
STREAM_TTL_S = 4 * 3600  # a transcript stream is kept this long after its last item
OUTBOX_LIMIT = 10_000
RETRY_S = 1.0
OPERATION_DEADLINE_S = 0.3  # REDIS_TIMEOUT_SECONDS' default: a webhook and a stream wait no longer
PROBE_S = 1.0  # while Redis is down, how often it is pinged


_apps = itertools.count(1)


def instance_name() -> str:
    """This app among the others: Heroku's dyno name (web.1) or the host, and the pid (and which
    app of this process, from the second on)."""
    n = next(_apps)
    return f"{os.environ.get('DYNO') or socket.gethostname()}:{os.getpid()}" + (f".{n}" if n > 1 else "")


class LocalState:
    """In one process: the default, and what every instance has without REDIS_URL."""

    shared = False

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or instance_name()
        self._calls: dict[str, dict[str, Any]] = {}
        self._reserved: dict[str, float] = {}  # call sid → admission expiry
        self._claims = LocalClaims()  # expired ones are swept as new ones arrive
        self._values: dict[str, tuple[dict, float]] = {}
        self._streams: dict[str, list[dict[str, Any]]] = {}
        self._followers: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self._queues: dict[str, list[dict]] = {}

    async def flush(self, timeout: float) -> int:
        return 0  # nothing waits: feeds are in this process

    async def close(self) -> None:
        pass

    # --- calls in progress ---

    async def admit(self, call_sid: str, limit: int) -> bool:
        """Reserves a place among all calls (limit 0: no limit); False when they are all taken."""
        now = time.monotonic()
        self._reserved = {sid: t for sid, t in self._reserved.items() if t > now and sid not in self._calls}
        if limit and len(self._calls) + len(self._reserved) >= limit and call_sid not in self._reserved:
            return False
        self._reserved[call_sid] = now + RESERVATION_TTL_S
        return True

    async def put_call(self, call_sid: str, info: dict[str, Any]) -> None:
        self._calls[call_sid] = {"call_sid": call_sid, "instance": self.instance, **info}
        self._reserved.pop(call_sid, None)

    async def drop_call(self, call_sid: str, handed_over: bool = False) -> None:
        self._calls.pop(call_sid, None)

    async def list_calls(self) -> list[dict[str, Any]]:
        return list(self._calls.values())

    # --- claims and values with a TTL ---

    async def claim(self, key: str, ttl_s: float) -> str:
        return await self._claims.claim(key, ttl_s)

    async def release(self, key: str, token: str | None = None) -> None:
        await self._claims.release(key, token)

    async def put(self, key: str, value: dict, ttl_s: float) -> bool:
        self._values[key] = (value, time.monotonic() + ttl_s)
        return True

    async def take(self, key: str) -> dict | None:
        value, expiry = self._values.pop(key, (None, 0.0))
        return value if expiry > time.monotonic() else None

    # --- queues: items any instance may take, each taken once (SIP calls left by a stopping instance) ---

    async def push(self, name: str, value: dict, ttl_s: float) -> bool:
        self._queues.setdefault(name, []).append(value)
        return True

    async def pop(self, name: str) -> dict | None:
        queue = self._queues.get(name)
        return queue.pop(0) if queue else None

    # --- streams (a call's transcript): items in order, followed live ---

    def open_stream(self, name: str) -> None:
        self._streams.setdefault(name, [])

    def append(self, name: str, item: dict[str, Any]) -> None:
        """Adds an item (END closes the stream); never blocks."""
        self._streams.setdefault(name, []).append(item)
        for queue in self._followers.get(name, ()):
            queue.put_nowait(item)
        if item is END:
            self._streams.pop(name, None)
            self._followers.pop(name, None)

    async def stream_open(self, name: str) -> bool:
        return name in self._streams

    async def follow(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """The items so far, then each new one, until END."""
        queue: asyncio.Queue = asyncio.Queue()
        for item in self._streams.get(name, ()):
            queue.put_nowait(item)
        self._followers[name].add(queue)
        try:
            while (item := await queue.get()) is not END:
                yield item
        finally:
            self._followers.get(name, set()).discard(queue)


class RedisState:
    """Across instances, in Redis (Heroku Key-Value Store: ``rediss://`` with a self-signed
    certificate, so verification is off for TLS URLs, as Heroku documents)."""

    shared = True
    PREFIX = "telephony:"

    def __init__(self, url: str, instance: str | None = None, deadline_s: float = OPERATION_DEADLINE_S) -> None:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        # A pooled connection that Redis closed (a restart, a failover) is retried on a fresh one.
        options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0,
                                   "health_check_interval": 15,
                                   "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
                                   "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}
        if url.startswith("rediss://"):
            options["ssl_cert_reqs"] = "none"
        self.redis = redis.from_url(url, **options)
        self.instance = instance or instance_name()
        self._errors = (redis.RedisError, OSError, asyncio.TimeoutError)
        self._down = False
        self._deadline_s = deadline_s
        self._probe: asyncio.Task | None = None
        self._local_claims = LocalClaims()  # this instance's claims (and their tokens), kept through an outage
        self._outbox: asyncio.Queue[tuple[str, dict]] = asyncio.Queue(OUTBOX_LIMIT)
        self._tasks: list[asyncio.Task] = []
        self._writing = 0  # the item being written now (1), for flush()
        self._wakers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)  # feed → its followers here
        self._listener: asyncio.Task | None = None
        self._mine: dict[str, dict[str, Any]] = {}  # this instance's calls, refreshed

    def _key(self, *parts: str) -> str:
        return self.PREFIX + ":".join(parts)

    def _started(self) -> None:
        """Its writer and refresher run from the first use (the app may run without a lifespan)."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._write_streams()), asyncio.create_task(self._refresh())]

    async def flush(self, timeout: float) -> int:
        """Waits (bounded) for the transcript items queued for Redis, e.g. at shutdown; the number
        left unwritten (logged)."""
        deadline = time.monotonic() + timeout
        while (self._outbox.qsize() or self._writing) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = self._outbox.qsize() + self._writing
        if left:
            log.warning("transcript feeds: %d items not written to Redis at shutdown", left)
        return left

    async def close(self) -> None:
        tasks = [*self._tasks, *(t for t in (self._probe, self._listener) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*self._errors):
            await asyncio.wait_for(self.redis.aclose(), self._deadline_s)

    @property
    def down(self) -> bool:
        return self._down

    async def _safely(self, what: str, operation, default=None):
        """Runs one Redis operation within the deadline; on failure, one warning per outage and
        ``default``. While Redis is marked down the operation is not even tried."""
        if self._down:
            operation.close()  # a coroutine never started: nothing to wait for
            return default
        try:
            result = await asyncio.wait_for(operation, self._deadline_s)
        except self._errors as exc:
            self._failed(what, exc)
            return default
        self._answered()
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            why = f"no answer within {self._deadline_s:g} s" if isinstance(exc, asyncio.TimeoutError) else exc
            log.warning("Redis unreachable (%s: %s: %s): calls go on, shared state and feeds wait",
                        what, type(exc).__name__, why)
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        """While Redis is down nothing waits on it; this ping says when it is back."""
        while self._down:
            await asyncio.sleep(PROBE_S)
            with contextlib.suppress(*self._errors):
                await asyncio.wait_for(self.redis.ping(), self._deadline_s)
                self._answered()

    def _answered(self) -> None:
        if self._down:
            self._down = False
            log.warning("Redis is back: shared state resumes")

    # --- calls in progress: one key per call (its details) and a sorted set by expiry ---

    _ADMIT = """
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
    if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end
    if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
    return 1
    """

    async def admit(self, call_sid: str, limit: int) -> bool:
        now = time.time()
        admitted = await self._safely("admit", self.redis.eval(
            self._ADMIT, 1, self._key("calls"), now, now + RESERVATION_TTL_S, call_sid, limit), default=1)
        return bool(admitted)  # Redis down: each instance's own limit still holds

    async def put_call(self, call_sid: str, info: dict[str, Any]) -> None:
        self._started()
        self._mine[call_sid] = {"call_sid": call_sid, "instance": self.instance, **info}
        await self._write_call(call_sid)

    async def _write_call(self, call_sid: str) -> None:
        info = self._mine.get(call_sid)
        if info is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._key("call", call_sid), orjson.dumps(info), ex=int(CALL_TTL_S))
        pipe.zadd(self._key("calls"), {call_sid: time.time() + CALL_TTL_S})
        await self._safely("register call", pipe.execute())

    async def drop_call(self, call_sid: str, handed_over: bool = False) -> None:
        """The call left this instance; unless it was handed over (its new instance lists it now)."""
        self._mine.pop(call_sid, None)
        if handed_over:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self._key("call", call_sid))
        pipe.zrem(self._key("calls"), call_sid)
        await self._safely("drop call", pipe.execute())

    async def list_calls(self) -> list[dict[str, Any]]:
        sids = await self._safely("list calls", self.redis.zrangebyscore(self._key("calls"), time.time(), "+inf"))
        if sids is None:  # Redis down: what this instance knows
            return list(self._mine.values())
        if not sids:
            return []
        values = await self._safely("list calls", self.redis.mget([self._key("call", s.decode()) for s in sids]))
        return [orjson.loads(v) for v in values or () if v]  # a bare reservation has no details yet

    async def _refresh(self) -> None:
        """Keeps this instance's calls listed; they lapse within CALL_TTL_S if it dies."""
        while True:
            await asyncio.sleep(REFRESH_S)
            for call_sid in list(self._mine):
                await self._write_call(call_sid)

    # --- claims and values with a TTL ---

    _RELEASE = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    async def claim(self, key: str, ttl_s: float) -> str:
        # In this process first: a replay on this instance is refused even while Redis is away.
        token = await self._local_claims.claim(key, ttl_s)
        if not token:
            return ""
        holder = f"{self.instance}:{token}"
        claimed = await self._safely("claim", self.redis.set(self._key("claim", key), holder, nx=True,
                                                             px=int(ttl_s * 1000)), default=True)
        if not claimed:
            await self._local_claims.release(key, token)
            return ""
        return token  # Redis down (default True): the local claim holds alone

    async def release(self, key: str, token: str | None = None) -> None:
        """Releases a claim only while ``token`` (ours) holds it, here and in Redis (compare and
        delete): a stream that ends after another took its key (a handoff's new stream) must not
        delete the newcomer's claim."""
        token = token or self._local_claims.holder(key)
        if not token:
            return
        await self._local_claims.release(key, token)
        await self._safely("release", self.redis.eval(self._RELEASE, 1, self._key("claim", key),
                                                      f"{self.instance}:{token}"))

    async def put(self, key: str, value: dict, ttl_s: float) -> bool:
        return bool(await self._safely("put", self.redis.set(self._key("value", key), orjson.dumps(value),
                                                             px=int(ttl_s * 1000)), default=False))

    async def take(self, key: str) -> dict | None:
        raw = await self._safely("take", self.redis.getdel(self._key("value", key)))
        return orjson.loads(raw) if raw else None

    # --- queues: a list each; LPOP is atomic, so each item goes to exactly one instance ---

    async def push(self, name: str, value: dict, ttl_s: float) -> bool:
        """Appends ``value``; the whole list lapses ``ttl_s`` after its last push."""
        key = self._key("queue", name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(key, orjson.dumps(value))
        pipe.expire(key, max(1, int(ttl_s)))
        return await self._safely("push", pipe.execute()) is not None

    async def pop(self, name: str) -> dict | None:
        raw = await self._safely("pop", self.redis.lpop(self._key("queue", name)))
        return orjson.loads(raw) if raw else None

    # --- streams: a list per stream (what a late follower reads) and a channel (what is new) ---

    def open_stream(self, name: str) -> None:
        self._queue(name, {})  # an empty item marks it open

    def append(self, name: str, item: dict[str, Any]) -> None:
        self._queue(name, item)

    def _queue(self, name: str, item: dict[str, Any]) -> None:
        self._started()
        try:
            self._outbox.put_nowait((name, item))
        except asyncio.QueueFull:
            log.error("transcript stream %s: %d items waiting for Redis; one dropped", name, OUTBOX_LIMIT)

    async def _write_streams(self) -> None:
        """Writes queued items in order; while Redis is down the head waits, so nothing is lost."""
        while True:
            name, item = await self._outbox.get()
            self._writing = 1
            while not await self._write_item(name, item):
                await asyncio.sleep(RETRY_S)
            self._writing = 0

    async def _write_item(self, name: str, item: dict[str, Any]) -> bool:
        items, channel, is_open = self._key("stream", name), self._key("feed", name), self._key("open", name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(items, orjson.dumps(item))
        pipe.expire(items, STREAM_TTL_S)
        if item is END:
            pipe.delete(is_open)
        else:
            pipe.set(is_open, 1, ex=STREAM_TTL_S)
        pipe.publish(channel, b"1")  # followers read the list: the message only wakes them
        return await self._safely("transcript", pipe.execute()) is not None  # one round trip

    async def stream_open(self, name: str) -> bool:
        return bool(await self._safely("stream", self.redis.exists(self._key("open", name)), default=0))

    async def follow(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """The items so far, then each new one, until END. Items carry ``seq``, which is how a
        follower knows what it has had: across a Redis outage (or a restart that lost the list)
        it resumes after the last one it delivered. This instance's one pub/sub connection only
        says "there is more" (Heroku's smallest Key-Value Store allows 20 connections in all).

        A feed whose END never comes (its instance died, or the marker was lost) ends once its
        call's entry has lapsed on two checks in a row with nothing new between them."""
        items = self._key("stream", name)
        waker = asyncio.Event()
        self._wakers[name].add(waker)
        self._listen()
        last = 0
        woken, gone = True, False  # gone: its call's entry was missing at the last quiet check
        try:
            while True:
                waker.clear()  # a wake-up from here on is seen by the wait below
                raw_items = await self._safely("transcript feed", self.redis.lrange(items, 0, -1))
                fresh = False
                for raw in raw_items or ():
                    item = orjson.loads(raw)
                    if item == END:
                        return
                    if item.get("seq", 0) > last:
                        last, fresh = item["seq"], True
                        yield item
                if woken or fresh:  # the feed is moving: its call is somewhere
                    gone = False
                else:  # a quiet FEED_CHECK_S: is its call still on some instance?
                    alive = await self._safely("feed liveness", self.redis.exists(self._key("call", name)))
                    if alive == 0 and gone:  # None (Redis away) says nothing either way
                        log.warning("transcript feed %s ended: its call is on no instance any more", name)
                        return
                    gone = alive == 0
                try:
                    await asyncio.wait_for(waker.wait(), FEED_CHECK_S)
                    woken = True
                except asyncio.TimeoutError:
                    woken = False
        finally:
            self._wakers[name].discard(waker)
            if not self._wakers[name]:
                del self._wakers[name]

    def _listen(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._wake_followers())

    async def _wake_followers(self) -> None:
        """One pub/sub connection per instance, whatever the number of followers: a message on a
        feed's channel wakes that feed's followers here, who then read its list."""
        prefix = self._key("feed", "")
        while self._wakers:
            pubsub = self.redis.pubsub()
            try:
                await asyncio.wait_for(pubsub.psubscribe(prefix + "*"), self._deadline_s * 4)
                while self._wakers:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=FEED_CHECK_S)
                    if message is not None:
                        for waker in self._wakers.get(message["channel"].decode()[len(prefix):], ()):
                            waker.set()
            except self._errors as exc:
                self._failed("transcript feeds", exc)
                await asyncio.sleep(RETRY_S)
            finally:
                with contextlib.suppress(*self._errors):
                    await asyncio.wait_for(pubsub.aclose(), self._deadline_s)


def call_entry(parameters: dict[str, str], state: str = "in-progress") -> dict[str, Any]:
    """What GET /calls says of a call, from its stream's parameters."""
    return {"direction": parameters.get("direction") or "inbound",
            "from": parameters.get("from", ""), "to": parameters.get("to", ""),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "state": state}


def make_state(redis_url: str | None, deadline_s: float = OPERATION_DEADLINE_S) -> LocalState | RedisState:
    return RedisState(redis_url, deadline_s=deadline_s) if redis_url else LocalState()
