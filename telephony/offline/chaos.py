"""The fault suite: the real service under the faults production brings, then invariants over what it wrote.

Started here, all on loopback: a real redis-server, the fake Twilio REST API, the scripted Realtime
server, a business's HTTP tool, each behind a ``FaultProxy``; a transcript webhook receiver; two
instances of ``python -m telephony serve`` (one with two workers) sharing Redis. Simulated callers
place calls continuously as Twilio does (signed webhook, then the stream the TwiML names) and record
what they hear; when the service redirects a call (a handoff), this harness plays Twilio and opens
the new stream. On a seeded schedule the proxies hang, reset, slow and restart their upstreams, one
instance gets SIGTERM (its calls are handed to the other, then it comes back, as in a deploy) and a
worker of the two-worker instance is killed.

At the end, ``invariants`` checks everything the service wrote: answers, audio at the caller, call
records, transcript deliveries, transcript feeds and counters. ``benchmarks/chaos.py`` runs it long;
tests/test_chaos.py runs it bounded in CI.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from telephony.offline.fake_twilio_rest import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from telephony.offline.fault_proxy import Fault, FaultProxy
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator

PUBLIC_URL = "https://bridge.example.com"
TOOLS_SECRET = "chaos-tools-secret"
CALLS_TOKEN = "chaos-calls-token"
METRICS_TOKEN = "chaos-metrics-token"
STREAM_SECRET = "chaos-stream-secret-shared-by-instances"
MAX_SILENCE_S = 2.0
TWILIO_WEBHOOK_TIMEOUT_S = 15.0  # Twilio gives up on a webhook after this
TURN_AT_S, TURN_S = 4.0, 0.6  # the caller speaks once, here, after the greeting and the tool's answer
VAD_SILENCE_S = 0.3  # the scripted model's end-of-turn silence
TARGETS = ("redis", "twilio", "model", "tool")
KINDS = ("hang", "reset", "slow", "restart")
# Silences at the caller that a fault of these targets explains: without the model there is
# nothing to say, and a killed worker's calls are gone. Redis, Twilio REST and tools run beside
# the audio with deadlines (README), so their faults explain no silence.
EXPLAINS_SILENCE = ("model", "instance-b")

PROFILE = """
[agent]
instructions = "You help callers with their orders."
greeting = "Hello, order desk."

[tools]
enabled = ["end_call"]
filler_after_ms = 1000

[[tools.http]]
name = "lookup_order"
description = "Find an order by its number"
url = "{url}"
parameters = {{ type = "object", properties = {{ order = {{ type = "string" }} }}, required = ["order"] }}
timeout_seconds = 3
"""


@dataclass
class ChaosConfig:
    duration_s: float = 180.0  # calls are placed for this long
    concurrent_calls: int = 3
    call_s: float = 8.0  # each caller hangs up after this
    faults_per_kind: int = 2  # per target and kind
    seed: int = 22
    sigterms: int = 1  # handoffs: SIGTERM to instance A, which then comes back
    worker_kills: int = 1  # SIGKILL to one worker of instance B
    max_calls: int = 1000
    workdir: Path | None = None


# --- the pieces ---


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.asynccontextmanager
async def serve_asgi(app):
    """An ASGI app under uvicorn in this process, on a free loopback port; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        sock.close()


class RedisProcess:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.dir = workdir / "redis"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        _stop_group(self.proc, signal.SIGKILL)


def _stop_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, wait_s: float = 30.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Instance:
    """One ``python -m telephony serve`` (a dyno): started in its own process group."""

    def __init__(self, name: str, workers: int, env: dict[str, str], workdir: Path) -> None:
        self.name, self.workers, self.env = name, workers, env
        self.port = _free_port()
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.accepting = False
        self.lifetime = 0  # how many times it was started

    async def start(self) -> None:
        env = {**self.env, "PORT": str(self.port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": str(self.workers)}
        log = self.log_path.open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "telephony", "serve"], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.lifetime += 1
        async with httpx.AsyncClient(timeout=1) as client:
            for _ in range(300):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode}: see {self.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        self.accepting = True
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz: see {self.log_path}")

    def sigterm(self) -> None:
        """As Heroku does: SIGTERM to every process of the dyno."""
        self.accepting = False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def workers_pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
                if ppid == self.proc.pid and b"resource_tracker" not in cmdline:
                    pids.append(int(entry.name))
        return sorted(pids)

    def stop(self) -> None:
        self.accepting = False
        _stop_group(self.proc)


# --- the callers ---


@dataclass
class Segment:
    """One media stream of a call (a call handed over has two)."""

    instance: str
    lifetime: int
    t0: float = 0.0  # monotonic, when the stream opened
    t_end: float = 0.0
    agent: bytes = b""
    closed_by_bridge: bool = False
    redirected: bool = False
    error: str = ""
    resumed: bool = False


@dataclass
class CallLog:
    sid: str
    t_post: float = 0.0
    answer_status: int | None = None
    answer_s: float | None = None
    twiml: str = ""
    segments: list[Segment] = field(default_factory=list)
    redirects: asyncio.Queue = field(default_factory=asyncio.Queue)
    sim: TwilioCallSimulator | None = None
    completed_by_service: bool = False
    feed_ended: bool | None = None  # None: no feed opened
    feed_turns: list[int] = field(default_factory=list)
    feed_error: str = ""
    end: float = 0.0

    def heard(self) -> list[float]:
        """Monotonic times of each 20 ms the caller heard agent audio, over every segment."""
        times = []
        for seg in self.segments:
            frames = len(seg.agent) // 160
            if not frames or not seg.t0:
                continue
            pcm = np.frombuffer(audioop.ulaw2lin(seg.agent[:frames * 160], 2), "<i2").astype(np.float64)
            rms = np.sqrt(np.mean(pcm.reshape(frames, 160) ** 2, axis=1))
            times += [seg.t0 + i * 0.02 for i in np.nonzero(rms >= 200)[0]]
        return times


def caller_script(seconds: float) -> bytes:
    """Silence, one 0.6 s 300 Hz turn at TURN_AT_S, silence: μ-law 8 kHz."""
    t = np.arange(int(8000 * TURN_S)) / 8000
    tone = audioop.lin2ulaw((8000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes(), 2)
    before = b"\xff" * int(8000 * TURN_AT_S)
    return (before + tone + b"\xff" * int(8000 * seconds))[:int(8000 * seconds)]


def stream_of(twiml: str) -> tuple[str, dict[str, str]] | None:
    """The ``<Stream>``'s URL path and parameters, as Twilio reads them from the TwiML."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return None
    stream = next(root.iter("Stream"), None)
    if stream is None or not stream.get("url"):
        return None
    url = urlsplit(stream.get("url"))
    path = url.path + (f"?{url.query}" if url.query else "")
    return path, {p.get("name"): p.get("value") for p in stream.iter("Parameter")}


class Chaos:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.calls: dict[str, CallLog] = {}
        self.faults: list[Fault] = []
        self.delivered: list[dict[str, Any]] = []  # transcript webhook posts, in arrival order
        self.tool_requests = 0
        self.fake_twilio = FakeTwilio(on_update=self._on_twilio_update)
        self.proxies: dict[str, FaultProxy] = {}
        self.instances: list[Instance] = []
        self.metrics: dict[str, str] = {}
        self.notes: list[str] = []
        self._rr = 0
        self._tasks: set[asyncio.Task] = set()

    # --- Twilio's part ---

    def _on_twilio_update(self, sid: str, form: dict[str, str]) -> None:
        call = self.calls.get(sid)
        if call is None or call.sim is None:
            return
        if form.get("Twiml") and (stream := stream_of(form["Twiml"])):
            call.redirects.put_nowait(stream)  # the new TwiML's stream opens on a dyno that is up
            call.sim.redirect()
        elif form.get("Status") == "completed":
            call.completed_by_service = True
            call.sim.redirect()  # the call is over: the stream stops, no new one

    def _pick(self) -> Instance | None:
        up = [i for i in self.instances if i.accepting]
        if not up:
            return None
        self._rr += 1
        return up[self._rr % len(up)]

    async def _webhook(self, instance: Instance, sid: str) -> httpx.Response:
        form = {"CallSid": sid, "AccountSid": ACCOUNT_SID, "From": "+15550100001", "To": "+15550100002",
                "Direction": "inbound", "CallStatus": "ringing"}
        headers = {"X-Forwarded-Proto": "https", "Host": urlsplit(PUBLIC_URL).netloc,
                   "X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(
                       PUBLIC_URL + "/twilio/voice", form)}
        async with httpx.AsyncClient(timeout=TWILIO_WEBHOOK_TIMEOUT_S) as client:
            return await client.post(f"http://127.0.0.1:{instance.port}/twilio/voice", data=form, headers=headers)

    async def _call(self) -> None:
        sid = "CA" + uuid.uuid4().hex
        call = self.calls[sid] = CallLog(sid)
        instance = self._pick()
        if instance is None:
            return
        call.t_post = time.monotonic()
        try:
            answer = await self._webhook(instance, sid)
            call.answer_status, call.twiml = answer.status_code, answer.text
        except httpx.HTTPError as exc:
            call.twiml = f"{type(exc).__name__}: {exc}"
        call.answer_s = time.monotonic() - call.t_post
        stream = stream_of(call.twiml) if call.answer_status == 200 else None
        if stream is None:
            call.end = time.monotonic()
            return
        script = caller_script(self.config.call_s)
        first_t0 = None
        feed = None
        for _ in range(4):  # a call is handed over at most a few times
            path, params = stream
            seg = Segment(instance.name, instance.lifetime, resumed=params.get("resume") == "1")
            call.segments.append(seg)
            offset = 0.0 if not first_t0 else time.monotonic() - first_t0
            remaining = self.config.call_s - offset
            if remaining <= 0.2:
                break
            call.sim = sim = TwilioCallSimulator(
                f"ws://127.0.0.1:{instance.port}{path}", call_sid=sid, custom_parameters=params,
                caller_audio=script[int(offset * 8000):], duration_s=remaining)
            if feed is None:
                feed = self._spawn(self._follow(call, sim.started))
            try:
                result = await asyncio.wait_for(sim.run(), remaining + 20)
                seg.agent, seg.closed_by_bridge = result.agent, result.closed_by_bridge_at is not None
            except Exception as exc:  # a refused handshake, a dropped connection: recorded, not raised
                seg.error = f"{type(exc).__name__}: {exc}"[:200]
            seg.t0 = time.monotonic() - sim.elapsed() if sim.started.is_set() else 0.0
            seg.t_end = time.monotonic()
            first_t0 = first_t0 or seg.t0
            if not sim._redirected or call.completed_by_service:
                break
            seg.redirected = True
            try:
                stream = await asyncio.wait_for(call.redirects.get(), 5)
            except TimeoutError:
                break
            instance = self._pick() or instance
        call.end = time.monotonic()

    async def _follow(self, call: CallLog, started: asyncio.Event) -> None:
        """GET /calls/{sid}/transcript through the router (any instance up), reconnecting as a client
        would when an instance goes away: the feed must end once the call has."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.3)  # the stream's start reaches the service
        call.feed_ended = False
        following = False
        deadline = time.monotonic() + self.config.call_s + 25
        while time.monotonic() < deadline and not call.feed_ended:
            instance = self._pick()
            if instance is None:
                await asyncio.sleep(0.2)
                continue
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    status = await self._read_feed(call, instance)
                if status == 404:
                    if call.end:  # the call is over: to a client, a feed not in progress has ended
                        call.feed_ended = True if following else None
                        return
                    await asyncio.sleep(0.2)  # not in progress yet
                following = following or status == 200
            except (TimeoutError, httpx.HTTPError) as exc:
                call.feed_error = type(exc).__name__
                await asyncio.sleep(0.2)

    async def _read_feed(self, call: CallLog, instance: Instance) -> int:
        url = f"http://127.0.0.1:{instance.port}/calls/{call.sid}/transcript"
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=None)) as client:
            async with client.stream("GET", url, headers={"Authorization": f"Bearer {CALLS_TOKEN}"}) as r:
                if r.status_code != 200:
                    call.feed_error = f"HTTP {r.status_code}"
                    return r.status_code
                event, seen = "", []
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "transcript":
                        seen.append(json.loads(line[6:]).get("seq"))
                    elif line.startswith("data: ") and event == "end":
                        call.feed_ended = True
                        break
                call.feed_turns = seen
                return 200

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- the schedule ---

    def schedule(self) -> list[tuple[float, str, str, float]]:
        """(at s, target, kind, duration s), seeded: each target and kind ``faults_per_kind`` times,
        spread evenly over the run in a shuffled order, so that faults rarely overlap."""
        c = self.config
        entries = [(t, k) for t in TARGETS for k in KINDS for _ in range(c.faults_per_kind)]
        entries += [("instance-a", "sigterm")] * c.sigterms + [("instance-b", "worker_kill")] * c.worker_kills
        self.rng.shuffle(entries)
        start, span = 4.0, max(1.0, c.duration_s - 10.0)
        out = []
        for n, (target, kind) in enumerate(entries):
            at = start + span * (n + self.rng.uniform(0.1, 0.6)) / len(entries)
            seconds = {"hang": self.rng.uniform(1.5, 3.0), "slow": self.rng.uniform(1.0, 3.0),
                       "restart": self.rng.uniform(1.0, 2.0)}.get(kind, 0.0)
            out.append((round(at, 2), target, kind, round(seconds, 2)))
        return out

    async def _run_schedule(self, t0: float) -> None:
        for at, target, kind, seconds in self.schedule():
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            if target in self.proxies:
                self.proxies[target].inject(kind, seconds, delay_s=self.rng.uniform(0.05, 0.3))
            elif kind == "sigterm":
                await self._deploy(self.instances[0])
            elif kind == "worker_kill":
                self._kill_worker(self.instances[1])

    async def _deploy(self, instance: Instance) -> None:
        for _ in range(100):  # a deploy that hands nothing over tests nothing: wait (bounded) for a call
            if any(c.sim is not None and c.sim.started.is_set() and not c.end and c.segments
                   and c.segments[-1].instance == instance.name for c in self.calls.values()):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        start, wall = time.monotonic(), time.time()
        instance.sigterm()
        fault = Fault("sigterm", instance.name, start, start, wall, wall)
        self.faults.append(fault)
        for _ in range(600):  # Heroku's SIGKILL comes 30 s after SIGTERM
            if instance.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            self.notes.append(f"{instance.name} still running 30 s after SIGTERM: killed")
            _stop_group(instance.proc, signal.SIGKILL)
        fault.end, fault.wall_end = time.monotonic(), time.time()
        self.notes.append(f"{instance.name} exited {instance.proc.returncode} "
                          f"{fault.end - fault.start:.1f} s after SIGTERM")
        await instance.start()

    def _kill_worker(self, instance: Instance) -> None:
        pids = instance.workers_pids()
        if not pids:
            self.notes.append(f"{instance.name}: no worker to kill")
            return
        victim = pids[self.rng.randrange(len(pids))]
        start, wall = time.monotonic(), time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        self.faults.append(Fault("worker_kill", instance.name, start, start + 3.0, wall, wall + 3.0))

    # --- the run ---

    def _receiver(self) -> Starlette:
        async def turn(request: Request) -> Response:
            self.delivered.append(json.loads(await request.body()))
            return Response(status_code=204)

        return Starlette(routes=[Route("/turns", turn, methods=["POST"])])

    def _tool(self) -> Starlette:
        async def hook(request: Request) -> Response:
            await request.body()
            self.tool_requests += 1
            return JSONResponse({"status": "shipped", "eta": "Tuesday"})

        return Starlette(routes=[Route("/hooks/{name}", hook, methods=["POST"])])

    def _env(self, workdir: Path) -> dict[str, str]:
        p = self.proxies
        profile = workdir / "agent.toml"
        profile.write_text(PROFILE.format(url=f"http://127.0.0.1:{p['tool'].port}/hooks/lookup_order"))
        return {**os.environ,
                "REDIS_URL": f"redis://127.0.0.1:{p['redis'].port}/0",
                "PUBLIC_URL": PUBLIC_URL,
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                "TWILIO_API_BASE_URL": f"http://127.0.0.1:{p['twilio'].port}",
                "REALTIME_URL": f"ws://127.0.0.1:{p['model'].port}/v1/realtime", "REALTIME_API_KEY": "sk-chaos",
                "TRANSCRIPT_WEBHOOK_URL": f"http://127.0.0.1:{self._receiver_port}/turns",
                "CALL_RECORDS_DIR": str(workdir / "records"), "AGENT_PROFILE": str(profile),
                "TOOLS_SECRET": TOOLS_SECRET, "CALLS_API_TOKEN": CALLS_TOKEN, "METRICS_TOKEN": METRICS_TOKEN,
                "STREAM_SECRET": STREAM_SECRET, "SHUTDOWN_GRACE_SECONDS": "4", "LOG_LEVEL": "INFO",
                "FORWARDED_ALLOW_IPS": "127.0.0.1",
                "MAX_TOTAL_CALLS": "100"}  # the cross-instance limit puts Redis on the webhook's path

    async def run(self) -> Report:
        c = self.config
        workdir = Path(c.workdir or tempfile.mkdtemp(prefix="chaos-"))
        self.workdir = workdir
        redis = RedisProcess(workdir)
        script = Script(response_ms=1000, tool_calls={0: ("lookup_order", '{"order": "A-17"}')})
        async with contextlib.AsyncExitStack() as stack:
            redis.start()
            stack.callback(redis.stop)
            model = await stack.enter_async_context(ScriptedRealtimeServer(script, keep_connections=False))
            twilio_port = await stack.enter_async_context(serve_asgi(self.fake_twilio.app()))
            tool_port = await stack.enter_async_context(serve_asgi(self._tool()))
            self._receiver_port = await stack.enter_async_context(serve_asgi(self._receiver()))
            for name, port in (("redis", redis.port), ("twilio", twilio_port), ("model", model.port),
                               ("tool", tool_port)):
                self.proxies[name] = await stack.enter_async_context(FaultProxy(name, "127.0.0.1", port))
            env = self._env(workdir)
            self.instances = [Instance("instance-a", 1, env, workdir), Instance("instance-b", 2, env, workdir)]
            for instance in self.instances:
                stack.callback(instance.stop)
            await asyncio.gather(*(i.start() for i in self.instances))
            stack.push_async_callback(self._cancel_tasks)
            await self._place_calls()
            await self._settle()
            await self._scrape()
            for instance in self.instances:
                instance.stop()
        for proxy in self.proxies.values():
            self.faults += proxy.log
        return Report(self)

    async def _place_calls(self) -> None:
        c = self.config
        t0 = time.monotonic()
        schedule = self._spawn(self._run_schedule(t0))
        placed = 0

        async def caller(n: int) -> None:
            nonlocal placed
            await asyncio.sleep(n * c.call_s / max(1, c.concurrent_calls))  # staggered
            while time.monotonic() - t0 < c.duration_s and placed < c.max_calls:
                placed += 1
                await self._call()
                await asyncio.sleep(0.2)

        await asyncio.gather(*(caller(n) for n in range(c.concurrent_calls)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(schedule, 40)  # a deploy in progress finishes

    async def _settle(self) -> None:
        """Feeds and webhook deliveries get a bounded while to finish after the last call."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(not t.done() for t in self._tasks):
            await asyncio.sleep(0.1)

    async def _scrape(self) -> None:
        async with httpx.AsyncClient(timeout=3) as client:
            for instance in self.instances:
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"http://127.0.0.1:{instance.port}/metrics",
                                         headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
                    self.metrics[instance.name] = r.text

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- invariants ---


@dataclass
class Invariant:
    name: str
    checked: int = 0
    broken: list[str] = field(default_factory=list)
    excused: int = 0
    excuses: list[str] = field(default_factory=list)  # what a fault explained, for the curious

    def excuse(self, what: str) -> None:
        self.excused += 1
        self.excuses.append(what)

    @property
    def held(self) -> bool:
        return not self.broken


def _counter(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class Report:
    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos
        self.calls = [c for c in chaos.calls.values() if c.t_post]
        self.records = self._read_records(chaos.workdir / "records")
        self.invariants = [self.answered(), self.no_unexplained_silence(), self.records_end_with_a_reason(),
                           self.turns_delivered_once_in_order(), self.feeds_end(), self.counters_match_records()]

    @staticmethod
    def _read_records(directory: Path) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for path in sorted(directory.glob("*.jsonl")) if directory.exists() else ():
            lines = []
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    lines.append(json.loads(line))
            out[path.stem] = lines
        return out

    def _explained(self, t0: float, t1: float) -> bool:
        return any(f.target in EXPLAINS_SILENCE and f.covers(t0, t1, margin=MAX_SILENCE_S)
                   for f in self.chaos.faults)

    def _faults_near(self, call: CallLog) -> str:
        near = [f"{f.kind} {f.target}" for f in self.chaos.faults if f.covers(call.t_post, call.end, MAX_SILENCE_S)]
        return "faults: " + (", ".join(near) or "none")

    def answered(self) -> Invariant:
        inv = Invariant("every call answered (TwiML with a stream within 15 s, greeting heard)")
        for call in self.calls:
            inv.checked += 1
            heard = call.heard()
            if call.answer_status != 200 or stream_of(call.twiml) is None:
                inv.broken.append(f"{call.sid}: webhook {call.answer_status} after {call.answer_s:.1f} s: "
                                  f"{call.twiml[:80]!r}")
            elif not heard:
                why = call.segments[0].error if call.segments else "no stream"
                what = f"{call.sid}: no greeting heard ({why or 'stream ran, silent'}; {self._faults_near(call)})"
                if self._explained(call.t_post, call.end):
                    inv.excuse(what)
                else:
                    inv.broken.append(what)
        return inv

    def no_unexplained_silence(self) -> Invariant:
        """Where the caller expects audio (the greeting after dialling, the answer after their turn),
        it comes within 2 s, unless a fault that explains it overlaps the wait."""
        inv = Invariant(f"no silence > {MAX_SILENCE_S:.0f} s at the caller that no fault explains")
        for call in self.calls:
            if not call.segments or call.segments[0].t0 == 0.0:
                continue
            heard = call.heard()
            expected = [("greeting", call.t_post)]
            turn_end = call.segments[0].t0 + TURN_AT_S + TURN_S + VAD_SILENCE_S
            if turn_end + MAX_SILENCE_S < call.end:
                expected.append(("answer", turn_end))
            for what, at in expected:
                inv.checked += 1
                first = next((t for t in heard if t >= at), None)
                waited = (first if first is not None else call.end) - at
                if waited <= MAX_SILENCE_S:
                    continue
                if self._explained(at, at + waited):
                    inv.excuse(f"{call.sid}: {what} after {waited:.1f} s; {self._faults_near(call)}")
                else:
                    inv.broken.append(f"{call.sid}: {what} after {waited:.1f} s of silence"
                                      f"{'' if first else ' (never came)'}; streams: "
                                      + ", ".join(f"{s.instance}{' (resumed)' if s.resumed else ''}"
                                                  f"{' ' + s.error if s.error else ''}" for s in call.segments))
        return inv

    def records_end_with_a_reason(self) -> Invariant:
        inv = Invariant("every call record ends with a reason")
        for call in self.calls:
            if not call.segments or call.segments[0].t0 == 0.0:
                continue
            inv.checked += 1
            lines = self.records.get(call.sid, [])
            starts = [r for r in lines if r.get("kind") == "start"]
            ends = [r for r in lines if r.get("kind") == "end"]
            if not lines:
                inv.broken.append(f"{call.sid}: no record at all")
            elif len(ends) < len(starts) or not all(e.get("reason") for e in ends):
                killed = any(f.kind == "worker_kill" and f.covers(call.t_post, call.end) for f in self.chaos.faults)
                if killed and len(ends) < len(starts):
                    # a SIGKILLed process writes nothing more
                    inv.excuse(f"{call.sid}: record without an end; its worker was killed")
                else:
                    inv.broken.append(f"{call.sid}: {len(starts)} stream start(s), {len(ends)} end(s): "
                                      f"{[e.get('reason') for e in ends]}")
            else:
                for seg, end in zip([s for s in call.segments if s.t0], ends):
                    if seg.redirected and "hand" not in str(end.get("reason")):
                        inv.broken.append(f"{call.sid}: stream handed over to another instance, its record "
                                          f"ends {end.get('reason')!r}")
        return inv

    def turns_delivered_once_in_order(self) -> Invariant:
        inv = Invariant("every transcript turn delivered once, in order")
        by_call: dict[str, list[int]] = {}
        for turn in self.chaos.delivered:
            by_call.setdefault(turn.get("call_sid"), []).append(turn.get("seq"))
        for call in self.calls:
            lines = self.records.get(call.sid, [])
            written = [r for r in lines if r.get("kind") == "transcript"]
            if not written:
                continue
            inv.checked += 1
            got = by_call.get(call.sid, [])
            if got == list(range(1, len(written) + 1)):
                continue
            ended = any(r.get("kind") == "end" for r in lines)
            killed = any(f.kind == "worker_kill" and f.covers(call.t_post, call.end) for f in self.chaos.faults)
            if killed and not ended and got == list(range(1, len(got) + 1)):
                # Once and in order, but the tail was still queued in memory when its process was
                # SIGKILLed: nothing can deliver what a killed process held.
                inv.excuse(f"{call.sid}: {len(written) - len(got)} of {len(written)} turns were queued in a "
                           f"killed worker")
            else:
                inv.broken.append(f"{call.sid}: {len(written)} turns recorded, delivered seq {got}")
        return inv

    def feeds_end(self) -> Invariant:
        inv = Invariant("every transcript feed ends")
        for call in self.calls:
            if call.feed_ended is None:
                continue
            inv.checked += 1
            if not call.feed_ended:
                inv.broken.append(f"{call.sid}: feed still open {self.chaos.config.call_s + 25:.0f} s after it "
                                  f"opened ({call.feed_error or 'no end event'}); turns seen {call.feed_turns}")
        return inv

    def counters_match_records(self) -> Invariant:
        """Instance A (one worker, one registry) in its last lifetime: calls_total counts the streams
        it served that ended, and handoffs resumed count the resumed ones."""
        inv = Invariant("counters (/metrics) match records (instance A, last lifetime)")
        a = self.chaos.instances[0]
        text = self.chaos.metrics.get(a.name)
        if text is None:
            inv.broken.append("instance A's /metrics could not be read")
            return inv
        segs = [s for c in self.calls for s in c.segments if s.instance == a.name and s.lifetime == a.lifetime
                and s.t0]
        counted = sum(_counter(text, "telephony_calls_total").values())
        ended = sum(1 for c in self.calls for s, r in zip([s for s in c.segments if s.t0],
                    [r for r in self.records.get(c.sid, []) if r.get("kind") == "end"])
                    if s.instance == a.name and s.lifetime == a.lifetime)
        inv.checked += 1
        if not (counted == len(segs) == ended):
            inv.broken.append(f"telephony_calls_total {counted:.0f}, streams served {len(segs)}, "
                              f"record ends {ended}")
        resumed = _counter(text, "telephony_handoffs_total").get('telephony_handoffs_total{outcome="resumed"}', 0)
        inv.checked += 1
        if resumed != sum(s.resumed for s in segs):
            inv.broken.append(f"handoffs resumed {resumed:.0f}, resumed streams {sum(s.resumed for s in segs)}")
        return inv

    # --- printing ---

    def fault_table(self) -> str:
        counts: dict[tuple[str, str], int] = {}
        for f in self.chaos.faults:
            counts[(f.kind, f.target)] = counts.get((f.kind, f.target), 0) + 1
        rows = [f"{'fault':<12} {'target':<11} {'count':>5}"]
        rows += [f"{k:<12} {t:<11} {n:>5}" for (k, t), n in sorted(counts.items())]
        return "\n".join(rows)

    def invariant_table(self, examples: int = 3, excused_examples: int = 0) -> str:
        rows = [f"{'invariant':<66} {'checked':>7} {'excused':>7}  result"]
        for inv in self.invariants:
            rows.append(f"{inv.name:<66} {inv.checked:>7} {inv.excused:>7}  "
                        + ("held" if inv.held else f"BROKEN ({len(inv.broken)})"))
            rows += [f"    e.g. {b}" for b in inv.broken[:examples]]
            rows += [f"    excused: {b}" for b in inv.excuses[:excused_examples]]
        return "\n".join(rows)

    def summary(self) -> str:
        calls = len(self.calls)
        handed = sum(1 for c in self.calls if any(s.redirected for s in c.segments))
        return (f"{calls} calls, {handed} handed over, {len(self.chaos.delivered)} transcript turns delivered, "
                f"{self.chaos.tool_requests} tool requests; workdir {self.chaos.workdir}\n"
                + "\n".join(self.chaos.notes))


async def run_chaos(config: ChaosConfig) -> Report:
    return await Chaos(config).run()
