"""Two app instances sharing a real redis-server: calls listed and transcripts followed across
instances, limits across instances, and Redis going away mid-call."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from conftest import running_app
from helpers import active_spans, follow_feed, simulated_call, twilio_post, ulaw_silence, ulaw_tone

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve.shared_state import END, RedisState
from telephony.settings import Settings

TOKEN = "calls-token-shared"
# Call sids in Twilio's shape (CA + 32 hex): the Twilio routes refuse any other.
ON_A, ON_B, DOWN = ("CA" + c * 32 for c in "abd")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def until(check, timeout_s: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


async def sse_turns(client: httpx.AsyncClient, url: str) -> list[dict]:
    """Follows a transcript feed to its end; the turns it carried."""
    turns: list[dict] = []
    assert await follow_feed(client, url, turns, AUTH, 30), "the feed ended without `event: end`"
    return turns


async def test_two_instances_list_each_others_calls_and_follow_each_others_transcripts(redis_server):
    script = Script(response_ms=1000, speed=2.0)
    caller_a = ulaw_silence(2.0) + ulaw_tone(500, 0.6) + ulaw_silence(2.4)
    async with ScriptedRealtimeServer(script) as upstream:
        settings = Settings(twilio_validate_signatures=False,
                            realtime_url=upstream.url, realtime_api_key="k", calls_api_token=TOKEN,
                            redis_url=redis_server.url)
        async with running_app(settings) as (a, host_a), running_app(settings) as (b, host_b), \
                httpx.AsyncClient() as client:
            on_a = simulated_call(a, host_a, call_sid=ON_A, caller_audio=caller_a,
                                  parameters={"from": "+15550001111", "to": "+15550002222", "direction": "inbound"})
            on_b = simulated_call(b, host_b, call_sid=ON_B, caller_audio=ulaw_silence(3.0))
            calls = [asyncio.create_task(on_a.run()), asyncio.create_task(on_b.run())]

            async def feed_open():
                r = await client.get(f"http://{host_b}/calls/{ON_A}/transcript", headers={"Authorization": "x"})
                return r.status_code == 401 and (await a.state.transcripts.followable(ON_A)) and \
                    await b.state.transcripts.followable(ON_A)
            await until(feed_open, what="A's call to be known on B")
            feed = asyncio.create_task(sse_turns(client, f"http://{host_b}/calls/{ON_A}/transcript"))

            async def both_listed(host):
                r = await client.get(f"http://{host}/calls", headers=AUTH)
                assert r.status_code == 200
                listed = {c["call_sid"]: c for c in r.json()["calls"]}
                return listed if set(listed) == {ON_A, ON_B} else None
            listed_a = await until(lambda: both_listed(host_a), what="both calls on A's list")
            listed_b = await until(lambda: both_listed(host_b), what="both calls on B's list")
            unauthorised = await client.get(f"http://{host_a}/calls")
            turns = await feed
            await asyncio.gather(*calls)
            after = await until(lambda: _empty(client, host_a), what="the calls to leave the list")

    assert listed_a == listed_b
    entry = listed_a[ON_A]
    assert entry["instance"] == a.state.shared.instance != b.state.shared.instance == listed_a[ON_B]["instance"]
    assert (entry["direction"], entry["from"], entry["to"], entry["state"]) == \
        ("inbound", "+15550001111", "+15550002222", "in-progress")
    assert entry["started"].endswith("Z")
    assert unauthorised.status_code == 503 or unauthorised.status_code == 401
    # B's feed carried A's call, turn by turn, then its end.
    assert [t["speaker"] for t in turns] == ["agent", "caller", "agent"], turns
    assert [t["seq"] for t in turns] == [1, 2, 3] and {t["call_sid"] for t in turns} == {ON_A}
    assert turns[1]["text"].startswith("a 500 Hz tone")
    assert after


async def _empty(client, host):
    return (await client.get(f"http://{host}/calls", headers=AUTH)).json()["calls"] == []


async def test_max_total_calls_holds_across_instances_and_max_concurrent_per_instance(redis_server):
    settings = Settings(realtime_url="ws://127.0.0.1:9/", realtime_api_key="k", twilio_validate_signatures=False,
                        redis_url=redis_server.url, max_total_calls=2, max_concurrent_calls=5)
    async with running_app(settings) as (a, host_a), running_app(settings) as (b, host_b):
        answers = [await twilio_post(host, "/twilio/voice", {"CallSid": sid, "From": "+15550001111"})
                   for host, sid in ((host_a, "CA00000000000000000000000000000001"), (host_b, "CA00000000000000000000000000000002"), (host_a, "CA00000000000000000000000000000003"), (host_b, "CA00000000000000000000000000000004"))]
    busy = ['<Reject reason="busy" />' in r.text for r in answers]
    assert busy == [False, False, True, True]


async def test_redis_down_mid_call_the_call_goes_on_and_the_feed_resumes(redis_server, caplog):
    """Redis is killed while a call is in progress and a feed follows it from the other instance:
    the call's audio never notices, one warning says so, and once Redis is back the feed gets
    every turn, none lost, in order."""
    script = Script(response_ms=800, speed=2.0)
    caller = ulaw_silence(1.5) + ulaw_tone(500, 0.5) + ulaw_silence(1.5) + ulaw_tone(700, 0.5) + ulaw_silence(2.5)
    async with ScriptedRealtimeServer(script) as upstream:
        settings = Settings(twilio_validate_signatures=False,
                            realtime_url=upstream.url, realtime_api_key="k", calls_api_token=TOKEN,
                            redis_url=redis_server.url)
        async with running_app(settings) as (a, host_a), running_app(settings) as (b, host_b), \
                httpx.AsyncClient() as client:
            sim = simulated_call(a, host_a, call_sid=DOWN, caller_audio=caller)
            with caplog.at_level(logging.WARNING, logger="telephony.shared_state"):
                call = asyncio.create_task(sim.run())
                await until(lambda: b.state.transcripts.followable(DOWN), what="the call on B")
                feed = asyncio.create_task(sse_turns(client, f"http://{host_b}/calls/{DOWN}/transcript"))
                await asyncio.sleep(1.0)
                redis_server.stop()  # mid-call: the caller's first words come while it is down
                await asyncio.sleep(2.5)
                redis_server.start()
                result = await call
                turns = await asyncio.wait_for(feed, 15)
    warnings = [r.getMessage() for r in caplog.records if r.name == "telephony.shared_state"]
    assert any("Redis unreachable" in w for w in warnings) and any("Redis is back" in w for w in warnings)
    assert sum("Redis unreachable" in w for w in warnings) <= 2  # one per outage per instance, not per turn
    assert len(active_spans(result.agent)) >= 3  # greeting and both answers were heard: audio went on
    assert [t["seq"] for t in turns] == list(range(1, len(turns) + 1)) and len(turns) >= 4, turns


async def test_claims_and_handoff_values_with_a_ttl(redis_server):
    one, two = RedisState(redis_server.url), RedisState(redis_server.url)
    try:
        assert await one.claim("stream:CA1", 0.3) and not await two.claim("stream:CA1", 0.3)
        await one.release("stream:CA1")
        assert await two.claim("stream:CA1", 0.3)
        await asyncio.sleep(0.4)
        assert await one.claim("stream:CA1", 0.3)  # the lapsed claim
        assert await one.put("handoff:CA1", {"items": [1, 2]}, 5) and await two.take("handoff:CA1") == {"items": [1, 2]}
        assert await one.take("handoff:CA1") is None  # taken once
        one.append("s", {"seq": 1})
        one.append("s", END)
        assert [item async for item in two.follow("s")] == [{"seq": 1}]
    finally:
        await one.close()
        await two.close()


async def test_rediss_with_a_self_signed_certificate_works_as_on_heroku(tls_redis_server):
    import redis.asyncio as redis

    strict = redis.from_url(tls_redis_server.url)  # verifying, as by default: the certificate is refused
    with pytest.raises(redis.ConnectionError, match="certificate"):
        await strict.ping()
    await strict.aclose()
    one, two = RedisState(tls_redis_server.url), RedisState(tls_redis_server.url)
    try:
        assert await one.claim("stream:CA9", 5) and not await two.claim("stream:CA9", 5)
        await one.put_call("CA9", {"state": "in-progress"})
        assert [c["call_sid"] for c in await two.list_calls()] == ["CA9"]
    finally:
        await one.close()
        await two.close()
