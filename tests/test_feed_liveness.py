"""Issue 22 item 16, against a real redis-server: a transcript feed whose call is on no instance any
more ends (its END marker lost, or its instance killed), and an instance's followers share one
pub/sub connection (Heroku's smallest Key-Value Store allows 20 connections in all)."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from telephony.serve import shared_state
from telephony.serve.shared_state import RedisState

SID = "CA" + "9" * 32


async def test_a_feed_whose_instance_died_ends(redis_server, monkeypatch):
    monkeypatch.setattr(shared_state, "CALL_TTL_S", 1.0)  # the entry lapses 1 s after its last refresh
    monkeypatch.setattr(shared_state, "FEED_CHECK_S", 0.2)
    dying, follower = RedisState(redis_server.url, "dying"), RedisState(redis_server.url, "follower")
    try:
        await dying.put_call(SID, {"from": "+15550001111"})
        dying.open_stream(SID)
        dying.append(SID, {"seq": 1, "speaker": "caller", "text": "hello"})
        await dying.flush(2.0)
        for task in dying._tasks:  # killed: nothing refreshes its call, no END is ever written
            task.cancel()
        turns = await asyncio.wait_for(_collect(follower.follow(SID)), 10)  # it used to never end
    finally:
        await follower.close()
        await dying.redis.aclose()
    assert [t["seq"] for t in turns] == [1]


async def test_thirty_followers_share_one_pubsub_connection(redis_server):
    writer, followers = RedisState(redis_server.url, "writer"), RedisState(redis_server.url, "followers")
    admin = redis.from_url(redis_server.url)
    try:
        await writer.put_call(SID, {})
        writer.open_stream(SID)
        feeds = [asyncio.create_task(_collect(followers.follow(SID))) for _ in range(30)]
        await asyncio.sleep(0.5)
        clients = (await admin.execute_command("CLIENT", "LIST")).decode().splitlines()
        subscribed = [c for c in clients if " psub=1 " in f" {c} " or " sub=1 " in f" {c} "]
        for n in (1, 2):
            writer.append(SID, {"seq": n, "speaker": "agent", "text": f"turn {n}"})
        writer.append(SID, shared_state.END)
        results = await asyncio.wait_for(asyncio.gather(*feeds), 10)
    finally:
        await writer.close()
        await followers.close()
        await admin.aclose()
    assert len(subscribed) == 1, subscribed  # was one per follower
    assert all([t["seq"] for t in turns] == [1, 2] for turns in results)


async def _collect(feed) -> list[dict]:
    return [turn async for turn in feed]

