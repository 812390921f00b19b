"""SIGTERM on the real `telephony serve` process: drain, busy-reject, then end calls cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import httpx
from helpers import free_port, stream_from_twiml, ulaw_silence, wait_until
from twilio.request_validator import RequestValidator

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-shutdown-SECRET-key"
AUTH_TOKEN = "shutdown-SECRET-auth-token"
GRACE_S = 1.5
LATE = "CA" + "8" * 32  # call sids have Twilio's shape: the Twilio routes refuse any other
SHORT = "CA" + "9" * 32


async def answer(client: httpx.AsyncClient, base: str, call_sid: str) -> str:
    form = {"CallSid": call_sid, "From": "+15551230000", "To": "+15559870000"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(base + "/twilio/voice", form)
    r = await client.post(base + "/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})
    assert r.status_code == 200, r.text
    return r.text


async def serving(client: httpx.AsyncClient, base: str) -> bool:
    try:
        return (await client.get(base + "/healthz")).status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


async def healthz(client: httpx.AsyncClient, base: str, **expected) -> bool:
    health = (await client.get(base + "/healthz")).json()
    return all(health.get(k) == v for k, v in expected.items())


def caller(base: str, call_sid: str, twiml: str, seconds: float) -> TwilioCallSimulator:
    url, params = stream_from_twiml(twiml, base.split("://", 1)[1])  # the TwiML's signed URL, on loopback
    return TwilioCallSimulator(url, call_sid=call_sid,
                               custom_parameters=params, caller_audio=ulaw_silence(seconds),
                               duration_s=seconds, hang_up=True)


async def test_sigterm_drains_calls_then_ends_them_with_the_fallback():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with ScriptedRealtimeServer(Script(respond_to_turns=False, response_ms=300)) as upstream:
        env = {**os.environ, "REALTIME_URL": upstream.url, "REALTIME_API_KEY": API_KEY,
               "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": base, "HOST": "127.0.0.1", "PORT": str(port),
               "SHUTDOWN_GRACE_SECONDS": str(GRACE_S), "LOG_LEVEL": "INFO"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony", "serve", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            async with httpx.AsyncClient() as client:
                await wait_until(lambda: serving(client, base), "the server to start", timeout=20)
                short = caller(base, "CA" + "5" * 32, await answer(client, base, "CA" + "5" * 32), 1.0)  # ends in grace
                long = caller(base, "CA" + "6" * 32, await answer(client, base, "CA" + "6" * 32), 6.0)  # outlives it
                calls = [asyncio.create_task(short.run()), asyncio.create_task(long.run())]
                await wait_until(lambda: healthz(client, base, active_calls=2), "both calls to start")
                sigterm_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                await wait_until(lambda: healthz(client, base, status="draining"), "the server to drain")
                busy = await answer(client, base, LATE)  # still listening, but taking no calls
                health = (await client.get(base + "/healthz")).json()
                short_result, long_result = await asyncio.gather(*calls)
                long_ended_after = time.monotonic() - sigterm_at
            code = await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log = (await proc.stdout.read()).decode()

    assert '<Reject reason="busy" />' in busy, busy
    assert health == {"status": "draining", "active_calls": 2}
    assert short_result.closed_by_bridge_at is None  # finished on its own within the grace
    # The long call was ended by us, normally, so Twilio goes on to the <Say> fallback.
    assert long_result.closed_by_bridge_at is not None and long_result.close_code == 1000
    assert GRACE_S <= long_ended_after < GRACE_S + 1.5
    # After a clean shutdown uvicorn re-raises the signal it caught, so the exit is "by SIGTERM".
    assert code in (0, -signal.SIGTERM), log
    assert "Finished server process" in log
    assert "waiting up to 1.5 s for 2 call(s)" in log and "ending 1 call(s) still in progress" in log
    assert f"call {LATE} rejected as busy: shutting down" in log
    assert API_KEY not in log and AUTH_TOKEN not in log


def worker_pids(parent: int) -> list[int]:
    """The supervisor's children (multiprocessing may add a helper of its own: it holds no calls)."""
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        return [int(pid) for pid in f.read().split()]


async def until_both_workers_carry_calls(pid: int, port: int, place, limit: int
                                         ) -> tuple[list[asyncio.Task], dict[int, int]]:
    """Calls placed one after another (``place(n)`` → a simulated caller), each kept open, until
    both workers of the service ``pid`` carry some: the kernel picks the worker for each connection,
    and calls placed in a row often all land on one. Returns the calls' tasks and calls per worker."""
    calls: list[asyncio.Task] = []
    per_worker: dict[int, int] = {}
    while len(calls) < limit and sum(1 for n in per_worker.values() if n) < 2:
        calls.append(asyncio.create_task((await place(len(calls))).run()))
        await asyncio.sleep(0.4)
        per_worker = calls_per_process(worker_pids(pid), port)
    return calls, per_worker


def calls_per_process(pids: list[int], port: int) -> dict[int, int]:
    """Established connections to ``port`` each process holds, from Linux's /proc (the test's own
    HTTP client keeps none open): which worker carries which share of the calls."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
                    established.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        held = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        counts[pid] = len(held & established)
    return counts


async def test_sigterm_drains_every_worker_with_web_concurrency_2():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with ScriptedRealtimeServer(Script(respond_to_turns=False, response_ms=300)) as upstream:
        env = {**os.environ, "REALTIME_URL": upstream.url, "REALTIME_API_KEY": API_KEY,
               "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": base, "HOST": "127.0.0.1", "PORT": str(port),
               "SHUTDOWN_GRACE_SECONDS": str(GRACE_S), "LOG_LEVEL": "INFO", "WEB_CONCURRENCY": "2"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telephony", "serve", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            fresh = httpx.Limits(max_keepalive_connections=0)  # each request may reach either worker
            async with httpx.AsyncClient(limits=fresh) as client:
                await wait_until(lambda: serving(client, base), "the server to start", timeout=20)
                # Long calls until both workers carry some, and a short one.
                async def place(n: int) -> TwilioCallSimulator:
                    sid = f"CA{n:032x}"  # Twilio's shape: the Twilio routes refuse any other
                    return caller(base, sid, await answer(client, base, sid), 6.0)

                calls, per_worker = await until_both_workers_carry_calls(proc.pid, port, place, limit=10)
                assert sum(1 for n in per_worker.values() if n) == 2, per_worker
                short = asyncio.create_task(caller(base, SHORT, await answer(client, base, SHORT), 1.0).run())
                await asyncio.sleep(0.3)
                sigterm_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)  # to the supervisor alone: it tells the workers
                await asyncio.sleep(0.3)
                late = [await answer(client, base, f"CA{0xfa17 + i:032x}") for i in range(6)]
                short_result = await short
                long_results = await asyncio.gather(*calls)
                long_ended_after = time.monotonic() - sigterm_at
            code = await asyncio.wait_for(proc.wait(), 30)
            exited_after = time.monotonic() - sigterm_at
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log = (await proc.stdout.read()).decode()

    print(f"\n{len(long_results)} long calls on 2 workers {sorted(per_worker.values())}; all ended "
          f"{long_ended_after:.2f} s after SIGTERM; exit after {exited_after:.2f} s")
    assert all('<Reject reason="busy" />' in twiml for twiml in late), late  # every worker refuses
    assert short_result.closed_by_bridge_at is None  # finished on its own within the grace
    for result in long_results:  # ended by us, normally: Twilio goes on to the fallback
        assert result.closed_by_bridge_at is not None and result.close_code == 1000
    assert GRACE_S <= long_ended_after < GRACE_S + 1.5
    assert exited_after < 30  # Heroku's SIGKILL comes at 30 s
    assert code == 0, log
    assert log.count("shutting down: ending") == 2, log  # each worker ended its own
    assert API_KEY not in log and AUTH_TOKEN not in log
