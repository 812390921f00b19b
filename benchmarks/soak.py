"""Soak: many short calls, one after another and all at once, through the real app on loopback.

Reports asyncio tasks, open sockets and RSS before and after, which must come back to where
they were: a call that leaks a task, a socket or a buffer shows up here a few hundred times.

    python benchmarks/soak.py --sequential 500 --concurrent 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony.core.profile import load_profile  # noqa: E402
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer  # noqa: E402
from telephony.offline.simulator import TwilioCallSimulator  # noqa: E402
from telephony.serve.app import create_app  # noqa: E402
from telephony.serve.direct_lane import DirectWebSocketProtocol  # noqa: E402
from telephony.serve.security import AGENT_STREAM  # noqa: E402
from telephony.serve.stream_paths import signed_stream_url  # noqa: E402
from telephony.settings import Settings  # noqa: E402

CALL_S = 0.06  # three 20 ms frames: a very short call that still opens both sockets


@dataclass
class Snapshot:
    tasks: int
    sockets: int
    rss_kb: int
    task_set: frozenset = field(default=frozenset(), compare=False, repr=False)

    def new_tasks(self, before: "Snapshot") -> set:
        """Tasks alive now that were not before (one left over from an earlier test may end meanwhile)."""
        return set(self.task_set - before.task_set)

    def __str__(self) -> str:
        return f"tasks={self.tasks} sockets={self.sockets} rss={self.rss_kb / 1024:.1f} MB"


def snapshot() -> Snapshot:
    gc.collect()
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    tasks = frozenset(asyncio.all_tasks())
    return Snapshot(len(tasks), sockets, rss, tasks)


@contextlib.asynccontextmanager
async def serving(settings: Settings):
    app = create_app(settings, load_profile(ROOT / "config" / "agent.toml"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # Nagle off
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off", ws_max_size=1 << 20,
                                           ws=DirectWebSocketProtocol))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield app, "127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def one_call(app, host: str, n: int, call_s: float = CALL_S) -> None:
    call_sid = f"CA{n:032x}"  # Twilio's shape: the media stream refuses any other
    params = app.state.stream_tokens.with_token({"call_sid": call_sid}, time.time())
    url = signed_stream_url(f"ws://{host}/twilio/media-stream", app.state.stream_tokens, AGENT_STREAM, call_sid,
                            time.time())  # the URL the TwiML would name
    sim = TwilioCallSimulator(url, call_sid=call_sid,
                              custom_parameters=params, caller_audio=b"\xff" * int(8000 * call_s),
                              duration_s=call_s)
    result = await sim.run()
    if result.closed_by_bridge_at is not None:
        raise AssertionError(f"call {n} was ended by the bridge")


async def settled(app, upstream: ScriptedRealtimeServer, timeout: float = 5.0) -> None:
    """Waits for every call's teardown (both sockets closed) to finish."""
    deadline = time.monotonic() + timeout
    while (app.state.active_calls or upstream.connections) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    # Closing handshakes' last packets: wait until the task count has been still for 0.3 s, so a
    # teardown that is merely slow (a loaded machine) is not counted as one left behind.
    counts: list[int] = []
    while time.monotonic() < deadline and (len(counts) < 6 or len(set(counts[-6:])) > 1):
        counts.append(len(asyncio.all_tasks()))
        await asyncio.sleep(0.05)


async def burst(app, host: str, first: int, n: int, call_s: float) -> int:
    """``n`` calls at once; returns how many were in progress together at the peak."""
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(app.state.active_calls))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(one_call(app, host, first + i, call_s) for i in range(n)))
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return peak


async def soak(sequential: int, concurrent: int, concurrent_call_s: float = 1.0, warmup: int = 20) -> dict:
    # No greeting response and no VAD turns: the calls measure the bridge, not the fake model.
    script = Script(respond_to_turns=False, response_ms=100)
    async with ScriptedRealtimeServer(script, keep_connections=False) as upstream:
        settings = Settings(realtime_url=upstream.url, realtime_api_key="sk-soak", twilio_validate_signatures=False,
                            max_concurrent_calls=concurrent + 10)
        async with serving(settings) as (app, host):
            n = 0
            # Warm-up, one of each kind: imports, caches, and the allocator's high-water mark for
            # a burst of calls. What grows after this is what the calls leave behind.
            for _ in range(warmup):
                await one_call(app, host, n)
                n += 1
            await burst(app, host, n, concurrent, concurrent_call_s)
            n += concurrent
            await settled(app, upstream)
            before = snapshot()
            t0 = time.monotonic()
            for _ in range(sequential):
                await one_call(app, host, n)
                n += 1
            t_seq = time.monotonic() - t0
            await settled(app, upstream)
            after_sequential = snapshot()
            t0 = time.monotonic()
            peak = await burst(app, host, n, concurrent, concurrent_call_s)
            n += concurrent
            t_conc = time.monotonic() - t0
            await settled(app, upstream)
            after = snapshot()
            leftover = len(app.state.active_calls) + len(app.state.calls)
        served = upstream.served
    return {"before": before, "after_sequential": after_sequential, "after": after,
            "sequential_s": t_seq, "concurrent_s": t_conc, "peak_concurrent": peak, "served": served,
            "leftover_calls": leftover, "calls": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--concurrent-call-s", type=float, default=1.0,
                        help="length of each call in the concurrent burst")
    args = parser.parse_args()
    r = asyncio.run(soak(args.sequential, args.concurrent, args.concurrent_call_s))
    print(f"{args.sequential} sequential calls in {r['sequential_s']:.1f} s "
          f"({1000 * r['sequential_s'] / max(args.sequential, 1):.0f} ms each); "
          f"{args.concurrent} concurrent {args.concurrent_call_s:g} s calls in {r['concurrent_s']:.1f} s "
          f"(peak {r['peak_concurrent']} at once)")
    print(f"upstream sessions served: {r['served']} of {r['calls']} calls; calls left: {r['leftover_calls']}")
    print(f"before (after warm-up): {r['before']}")
    print(f"after sequential:       {r['after_sequential']}")
    print(f"after concurrent:       {r['after']}")


if __name__ == "__main__":
    main()
