"""Load benchmark: N simulated Twilio callers through ONE `telephony serve` process (or several).

    python benchmarks/load.py --calls 50 --seconds 20            # both codecs, beta and Live, side by side
    python benchmarks/load.py --calls 20 --seconds 10 --codec g711_ulaw --dialect beta live
    python benchmarks/load.py --calls 50 --seconds 20 --codec g711_ulaw --profile prof   # needs py-spy
    python benchmarks/load.py --calls 20 --seconds 10 --codec g711_ulaw --instances 2 --redis
        # two instances sharing a redis-server, against the same two without it (CPU per call)
    python benchmarks/load.py --calls 50 --seconds 20 --codec g711_ulaw --dialect beta --history off sqlite postgres
        # what writing the call history costs: none, the default SQLite file, a real PostgreSQL
    python benchmarks/load.py --calls 20 --seconds 15 --runs 3 --codec g711_ulaw --dialect beta --traces
        # with OTEL_EXPORTER_OTLP_ENDPOINT set to a local OTLP/HTTP receiver, against without it
    python benchmarks/load.py --calls 30 --seconds 15 --runs 3 --codec g711_ulaw --dialect beta --recording
        # every call recorded to a directory, against not recorded (CPU and RSS per call)
    python benchmarks/load.py --calls 20 --seconds 10 --codec g711_ulaw --dialect beta --carrier twilio telnyx plivo signalwire
        # each carrier's webhook and media stream, CPU per call beside Twilio's (and its ratio to it)

Three more processes on loopback: the server under test (`python -m telephony serve`), a scripted
Realtime server, and the callers (the carrier's caller from telephony/offline/callers, Twilio's by
default: its signed webhook, with credentials made up for the run, then its media stream exactly,
real-time paced, 20 ms caller frames; every caller talks over the agent every few seconds, so both
directions carry audio and barge-ins happen throughout). The webhooks are all posted during the
ramp, before the measured window. The figures come from the server process only: CPU time
from /proc/<pid>/stat, RSS from /proc/<pid>/status, bridge-added latency from its own /metrics
histograms, all over the window when every call is up.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
CYCLE_S = 4.0  # each caller: speech every 4 s…
SPEECH_S = 0.5  # …for 0.5 s; the agent's 5 s answers are always interrupted
RESPONSE_MS = 5000
DELTA_MS = 40  # agent audio per Realtime delta


# --- Roles run in their own processes ---


async def realtime_role(port_file: str, dialect: str) -> None:
    from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer

    script = Script(response_ms=RESPONSE_MS, chunk_ms=DELTA_MS, speed=1.0, silence_ms=300)
    async with ScriptedRealtimeServer(script, dialect=dialect) as server:
        Path(port_file).write_text(str(server.port))
        await asyncio.Event().wait()


STREAM_SECRET = "benchmark-stream-secret"  # the server's stream key, the same every run


def caller_audio(seconds: float, offset: float) -> bytes:
    import audioop

    import numpy as np

    t = np.arange(int(8000 * SPEECH_S)) / 8000
    speech = audioop.lin2ulaw((6000 * np.sin(2 * np.pi * 500 * t)).astype("<i2").tobytes(), 2)
    silence = b"\xff" * int(8000 * (CYCLE_S - SPEECH_S))
    audio = b"\xff" * int(8000 * offset)
    while len(audio) < seconds * 8000:
        audio += speech + silence
    return audio[: int(seconds * 8000)]


async def callers_role(url: str, calls: int, seconds: float, ramp: float, carrier: str) -> None:
    from telephony.offline.callers import CARRIERS
    from telephony.offline.dial import place_call

    rng = random.Random(8)
    chosen = CARRIERS[carrier]
    signer = chosen.signer_from_env(os.environ, {})  # the credential run_one made up for this run

    async def one(i: int) -> dict:
        await asyncio.sleep(ramp * i / calls)
        try:
            # The carrier's signed webhook, then its stream for exactly ``seconds`` (no early hang-up).
            _, result = await place_call(url, caller_audio(seconds, 1.0 + rng.random() * CYCLE_S),
                                         carrier_name=carrier, signer=signer, tail_s=0.0, hang_up_when_quiet_s=None)
        except Exception as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        media = sum(1 for m in result.received if m.get("event") == "media")  # agent audio, any carrier
        # Held: the bridge never closed on us (we hung up) and the agent's audio kept coming.
        return {"ok": result.close_code in (None, 1000) and media > 0, "clears": len(result.clears),
                "media": media}

    results = await asyncio.gather(*(one(i) for i in range(calls)))
    print(json.dumps(results))


# --- Server-side measurements ---


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process spent runnable but waiting for a CPU (main thread; /proc/<pid>/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def quantile(before: dict, after: dict, name: str, labels: tuple, q: float) -> float:
    """q-quantile (seconds) of a histogram over the window between two scrapes, interpolated."""
    buckets = sorted(
        (float(dict(k[1])["le"]), after[k] - before.get(k, 0.0)) for k in after
        if k[0] == f"{name}_bucket" and all(item in k[1] for item in labels))
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return buckets[-1][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def conversion_cost_us(codec_name: str) -> tuple[float, float]:
    """Median µs per 20 ms frame: caller→model and model→caller."""
    import numpy as np

    from telephony.core.audio import make_codec

    codec = make_codec(codec_name)
    rng = np.random.default_rng(0)
    ulaw = base64.b64encode(rng.integers(0, 256, 160, dtype=np.uint8).tobytes()).decode()
    # 20 ms of model audio: 480 PCM16 samples at 24 kHz, or 160 μ-law bytes.
    model = (rng.integers(-8000, 8000, 480, dtype=np.int16) if codec_name == "pcm16"
             else rng.integers(0, 256, 160, dtype=np.uint8))
    delta = base64.b64encode(model.tobytes()).decode()
    up = statistics.median(timeit.repeat(lambda: codec.caller_to_model(ulaw), number=2000, repeat=5)) / 2000
    down = statistics.median(timeit.repeat(lambda: codec.model_to_caller(delta), number=2000, repeat=5)) / 2000
    return up * 1e6, down * 1e6


def pinned(cpus: set[int] | None):
    """preexec_fn that keeps a child on ``cpus`` (None: wherever the kernel likes)."""
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen:
    """Samples the server's stacks, native frames included (under uvloop cProfile cannot tell
    idle from busy); group them with benchmarks/profile_summary.py. Native stacks need py-spy to
    pause the server at each sample, so its CPU figures read a little high in a profiled run."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy (and ptrace rights: root or CAP_SYS_PTRACE)")
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(max(int(seconds), 1)), "-r", "200",
                             "--native", "-f", "raw", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def scrape_all(ports: list[int]) -> dict[tuple[str, tuple], float]:
    """Every instance's metrics, summed (counters, histogram buckets and the active-calls gauge add up)."""
    total: dict[tuple[str, tuple], float] = {}
    for port in ports:
        for key, value in scrape(port).items():
            total[key] = total.get(key, 0.0) + value
    return total


def start_redis() -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("--redis needs redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close() is None, 10, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def start_postgres(workdir: str) -> tuple[subprocess.Popen, str]:
    """A throwaway PostgreSQL cluster (Debian's package); as root, run by the `postgres` user."""
    import glob
    import pwd

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        sys.exit("--history postgres needs PostgreSQL (apt-get install postgresql)")
    bindir = os.path.dirname(found[-1])
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(workdir, "data"), free_port()
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-U", "bench", "--auth=trust", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL, cwd=workdir)
    # Durable as in production (fsync on): what a commit costs is part of the measure.
    proc = subprocess.Popen([*as_user, f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", workdir,
                             "-c", "listen_addresses=127.0.0.1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=workdir)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.5).close() is None, 20, "postgres")
    time.sleep(0.5)  # accepting connections before it has finished starting up
    return proc, f"postgresql://bench@127.0.0.1:{port}/postgres"


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants (runuser → postmaster → PostgreSQL's backends)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += sum(cpu_seconds(current))
        except (OSError, ValueError, IndexError):
            continue
        todo += children.get(current, [])
    return total


class OtlpSink:
    """A local OTLP/HTTP trace receiver in a thread of this process (not the server's): answers
    every export 200 and counts the spans in it, as a collector would take them."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        sink = self
        self.spans = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                sink.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_one(codec: str, calls: int, seconds: float, profile_out: str | None, pin: bool = False,
            dialect: str = "beta", instances: int = 1, redis: bool = False, history: str = "sqlite",
            traces: bool = False, recording: bool = False, carrier: str = "twilio", named: bool = False) -> dict:
    from telephony.offline.callers import CARRIERS
    from telephony.offline.callers.base import service_env

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    # The carrier's credential, made up for the run: the server checks every webhook with it (its
    # service_env), the callers sign with it (their env); Twilio's routes are off for the others.
    credentials, signing = CARRIERS[carrier].generated()
    env = {**os.environ, "PYTHONPATH": path, "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text",
           "STREAM_SECRET": STREAM_SECRET, "MAX_CONCURRENT_CALLS": "0", "TWILIO_VALIDATE_SIGNATURES": "false",
           **service_env(credentials), **signing}
    here = Path(__file__).resolve()
    procs: list[subprocess.Popen] = []
    port_file = Path(f"/tmp/telephony-bench-{os.getpid()}.port")
    port_file.unlink(missing_ok=True)
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}  # traces: only when asked
    sink = OtlpSink() if traces else None
    if sink is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url
    # --pin: the server alone on CPU 0, the load generators on the others, so they do not compete.
    server_cpus, helper_cpus = ({0}, set(range(1, os.cpu_count() or 2))) if pin else (None, None)
    scratch = tempfile.mkdtemp(prefix="telephony-bench-")
    try:
        procs.append(subprocess.Popen([sys.executable, str(here), "--role", "realtime", "--port-file",
                                       str(port_file), "--dialect", dialect], env=env, cwd=ROOT,
                                      preexec_fn=pinned(helper_cpus)))
        wait_for(lambda: port_file.exists() and port_file.read_text(), 10, "the scripted Realtime server")
        rt_port = int(port_file.read_text())
        # The call history: off, the default SQLite file (in a scratch directory, not the checkout),
        # or a PostgreSQL of its own.
        db_proc = None
        if history == "off":
            env["CALL_HISTORY"] = "false"
        elif history == "sqlite":
            env["DATABASE_URL"] = f"sqlite:///{scratch}/telephony.sqlite3"
        else:
            db_proc, env["DATABASE_URL"] = start_postgres(scratch)
            procs.append(db_proc)
        if recording:  # every call recorded to a directory (the file store), as RECORDINGS_URL=file://
            env["RECORDINGS_URL"] = f"file://{scratch}/recordings"
        redis_proc = None
        if redis:
            redis_proc, redis_url = start_redis()
            procs.append(redis_proc)
            env["REDIS_URL"] = redis_url
        ports, servers = [free_port() for _ in range(instances)], []
        for port in ports:
            server_env = dict(env, REALTIME_URL=f"ws://127.0.0.1:{rt_port}/v1/realtime", REALTIME_API_KEY="bench",
                              AUDIO_CODEC=codec, PORT=str(port), HOST="127.0.0.1", WEB_CONCURRENCY="1",
                              REALTIME_DIALECT=dialect)
            servers.append(subprocess.Popen([sys.executable, "-m", "telephony", "serve"], env=server_env, cwd=ROOT,
                                            preexec_fn=pinned(server_cpus)))
            procs.append(servers[-1])
        for port in ports:
            wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200,
                     20, "the server")
        rss_idle = sum(rss_kb(server.pid) for server in servers)
        ramp = min(5.0, 1.0 + calls * 0.02)
        callers = []  # one process of callers per instance, the calls shared out
        for i, port in enumerate(ports):
            callers.append(subprocess.Popen(
                [sys.executable, str(here), "--role", "callers", "--url", f"ws://127.0.0.1:{port}",
                 "--calls", str(calls // instances + (i < calls % instances)), "--seconds", str(seconds + ramp),
                 "--ramp", str(ramp), "--carrier", carrier], env=env, cwd=ROOT, stdout=subprocess.PIPE, preexec_fn=pinned(helper_cpus)))
            procs.append(callers[-1])

        def server_cpu() -> tuple[float, float]:
            times = [cpu_seconds(server.pid) for server in servers]
            return sum(t[0] for t in times), sum(t[1] for t in times)

        # Measure once every call is up, until the first one hangs up.
        time.sleep(ramp + 1.0)
        helpers = (procs[0].pid, *(c.pid for c in callers))  # the load generators, to judge contention
        h0 = [sum(cpu_seconds(pid)) for pid in helpers]
        r0 = sum(cpu_seconds(redis_proc.pid)) if redis_proc else 0.0
        d0 = tree_cpu_seconds(db_proc.pid) if db_proc else 0.0
        m0, c0, t0 = scrape_all(ports), server_cpu(), time.monotonic()
        w0 = sum(runqueue_wait_s(server.pid) for server in servers)
        window = max(seconds - 2.0, 1.0)
        spy = py_spy(servers[0].pid, window, profile_out) if profile_out else None
        time.sleep(window)
        m1, c1, t1 = scrape_all(ports), server_cpu(), time.monotonic()
        h1 = [sum(cpu_seconds(pid)) for pid in helpers]
        r1 = sum(cpu_seconds(redis_proc.pid)) if redis_proc else 0.0
        d1 = tree_cpu_seconds(db_proc.pid) if db_proc else 0.0
        w1 = sum(runqueue_wait_s(server.pid) for server in servers)
        rss_loaded = sum(rss_kb(server.pid) for server in servers)
        active = m1[("telephony_active_calls", ())]
        if spy is not None:
            spy.wait(timeout=30)
        results = []
        for c in callers:
            out, _ = c.communicate(timeout=seconds + 60)
            results += json.loads(out)
        cpu_share = (sum(c1) - sum(c0)) / (t1 - t0)  # cores
        messages = sum(m1[k] - m0.get(k, 0.0) for k in m1
                       if k[0] in ("telephony_frames_received_total", "telephony_frames_sent_total"))
        per_call_rate = messages / (t1 - t0) / max(active, 1)
        lat = "telephony_bridge_added_latency_seconds"
        figures = {
            "carrier": carrier,
            "codec": (f"{carrier} " if named else "") + f"{dialect} {codec}" + (f" ×{instances}" if instances > 1 else "")
                     + (" +redis" if redis else "") + f" db:{history}" + (" +traces" if traces else "")
                     + (" +rec" if recording else ""),
            "calls": calls, "redis_cpu_pct": 100 * (r1 - r0) / (t1 - t0),
            "database_cpu_pct": 100 * (d1 - d0) / (t1 - t0),
            "held": sum(r["ok"] for r in results), "active": int(active),
            "clears": sum(r.get("clears", 0) for r in results),
            "cpu_pct_per_call": 100 * cpu_share / max(active, 1),
            "server_cpu_pct": 100 * cpu_share,
            "realtime_cpu_pct": 100 * (h1[0] - h0[0]) / (t1 - t0),
            "callers_cpu_pct": 100 * sum(h1[i] - h0[i] for i in range(1, len(helpers))) / (t1 - t0),
            "runqueue_wait_ms_per_s": 1000 * (w1 - w0) / (t1 - t0),
            "loadavg": float(Path("/proc/loadavg").read_text().split()[0]),
            "system_share_pct": 100 * (c1[1] - c0[1]) / max(sum(c1) - sum(c0), 1e-9),
            "messages_per_call_s": per_call_rate,
            "cpu_us_per_message": 1e6 * (sum(c1) - sum(c0)) / max(messages, 1),
            "p50_to_realtime_ms": 1000 * quantile(m0, m1, lat, (("direction", "to_realtime"),), 0.50),
            "p99_to_realtime_ms": 1000 * quantile(m0, m1, lat, (("direction", "to_realtime"),), 0.99),
            "p50_to_twilio_ms": 1000 * quantile(m0, m1, lat, (("direction", "to_twilio"),), 0.50),
            "p99_to_twilio_ms": 1000 * quantile(m0, m1, lat, (("direction", "to_twilio"),), 0.99),
            "p99_clear_ms": 1000 * quantile(m0, m1, "telephony_barge_in_latency_seconds", (), 0.99),
            "rss_kb_per_call": (rss_loaded - rss_idle) / max(active, 1),
            "rss_idle_mb": rss_idle / 1024,
        }
        figures["calls_per_core"] = 100 / figures["cpu_pct_per_call"] if figures["cpu_pct_per_call"] else 0
        figures["spans"] = sink.spans if sink is not None else 0  # exported so far (the rest at shutdown)
        return figures
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        port_file.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
        if sink is not None:
            sink.close()


ROWS = [
    ("calls held / started", lambda f: f"{f['held']}/{f['calls']} (active {f['active']})"),
    ("server CPU, % of a core", lambda f: f"{f['server_cpu_pct']:.1f}"),
    ("load generators CPU (Realtime + callers) %", lambda f: f"{f['realtime_cpu_pct']:.0f} + {f['callers_cpu_pct']:.0f}"),
    ("machine load average (1 min)", lambda f: f"{f['loadavg']:.2f}"),
    ("server waiting for a CPU, ms per s", lambda f: f"{f['runqueue_wait_ms_per_s']:.0f}"),
    ("CPU per call, % of a core", lambda f: f"{f['cpu_pct_per_call']:.2f}"),
    ("redis-server CPU, % of a core", lambda f: f"{f['redis_cpu_pct']:.2f}"),
    ("PostgreSQL CPU, % of a core", lambda f: f"{f['database_cpu_pct']:.2f}"),
    ("⇒ calls per core (CPU-bound)", lambda f: f"{f['calls_per_core']:.0f}"),
    ("  kernel share of that CPU, %", lambda f: f"{f['system_share_pct']:.0f}"),
    ("websocket messages per call per s", lambda f: f"{f['messages_per_call_s']:.0f}"),
    ("CPU per message, µs", lambda f: f"{f['cpu_us_per_message']:.0f}"),
    ("added latency → Realtime p50 / p99 ms", lambda f: f"{f['p50_to_realtime_ms']:.2f} / {f['p99_to_realtime_ms']:.2f}"),
    ("added latency → Twilio p50 / p99 ms", lambda f: f"{f['p50_to_twilio_ms']:.2f} / {f['p99_to_twilio_ms']:.2f}"),
    ("speech_started (live: caller frame) → clear p99 ms", lambda f: f"{f['p99_clear_ms']:.2f}"),
    ("barge-ins (clears received)", lambda f: str(f["clears"])),
    ("RSS per call, KB", lambda f: f"{f['rss_kb_per_call']:.0f}"),
    ("RSS idle, MB", lambda f: f"{f['rss_idle_mb']:.0f}"),
    ("spans exported during the run", lambda f: f"{f['spans']:.0f}"),
    ("conversion per 20 ms frame, caller→model µs", lambda f: f"{f['conv_up_us']:.1f}"),
    ("conversion per 20 ms frame, model→caller µs", lambda f: f"{f['conv_down_us']:.1f}"),
]


# Shown when other carriers ran beside Twilio: each one's median CPU per call over Twilio's, same settings.
RATIO_ROW = ("CPU per call ÷ Twilio's (same settings)",
             lambda f: f"{f['cpu_ratio_to_twilio']:.2f}" if "cpu_ratio_to_twilio" in f else "—")


def with_ratios(results: list[dict]) -> list[dict]:
    """Adds ``cpu_ratio_to_twilio`` to each result that has a Twilio run with the same settings."""
    def settings(r: dict) -> str:
        return r["codec"].split(" ", 1)[1] if r["codec"].startswith(r["carrier"] + " ") else r["codec"]

    twilio = {settings(r): r["cpu_pct_per_call"] for r in results if r["carrier"] == "twilio"}
    for r in results:
        base = twilio.get(settings(r))
        if base:
            r["cpu_ratio_to_twilio"] = r["cpu_pct_per_call"] / base
    return results


def print_table(results: list[dict]) -> None:
    rows = ROWS[:6] + [RATIO_ROW] + ROWS[6:] if any(r["carrier"] != "twilio" for r in results) else ROWS
    width = max(len(name) for name, _ in rows)
    print(f"\n{'':{width}}  " + "  ".join(f"{r['codec']:>16}" for r in results))
    for name, show in rows:
        print(f"{name:{width}}  " + "  ".join(f"{show(r):>16}" for r in results))


def main() -> None:
    from telephony.offline.callers import CARRIERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window is this minus 2 s")
    parser.add_argument("--codec", nargs="+", default=["pcm16", "g711_ulaw"], choices=["pcm16", "g711_ulaw"])
    parser.add_argument("--dialect", nargs="+", default=["beta", "live"], choices=["beta", "ga", "live"],
                        help="each dialect runs each codec (live: agent audio paced, our own VAD)")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report the median of each figure")
    parser.add_argument("--profile", metavar="FILE",
                        help="sample the server with py-spy over the window, raw stacks to FILE.<codec>")
    parser.add_argument("--json", action="store_true", help="also print every run as JSON")
    parser.add_argument("--pin", action="store_true",
                        help="server alone on CPU 0, load generators on the other CPUs (needs 2+)")
    parser.add_argument("--instances", type=int, default=1, help="server processes, the calls shared out")
    parser.add_argument("--redis", action="store_true",
                        help="also run the instances sharing a redis-server (REDIS_URL), side by side")
    parser.add_argument("--history", nargs="+", default=["sqlite"], choices=["off", "sqlite", "postgres"],
                        help="where the call history goes (default: SQLite, the service's default); several: "
                             "side by side")
    parser.add_argument("--traces", action="store_true",
                        help="also run each with OTEL_EXPORTER_OTLP_ENDPOINT set to a local receiver, alternating")
    parser.add_argument("--recording", action="store_true",
                        help="also run each with every call recorded (RECORDINGS_URL=file://…), alternating")
    parser.add_argument("--carrier", nargs="+", default=["twilio"], choices=list(CARRIERS),
                        help="whose webhook and media stream the callers speak; several: side by side, Twilio "
                             "always among them, with each one's CPU per call as a ratio to Twilio's")
    parser.add_argument("--role", choices=["realtime", "callers"], help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ramp", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "realtime":
        asyncio.run(realtime_role(args.port_file, args.dialect[0]))
        return
    if args.role == "callers":
        asyncio.run(callers_role(args.url, args.calls, args.seconds, args.ramp, args.carrier[0]))
        return
    print(f"machine: {os.cpu_count()} CPUs, {platform_cpu()}, Python {sys.version.split()[0]}"
          + (", server pinned to CPU 0, load generators to the rest" if args.pin else ""))
    if args.pin:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))  # this process measures, off CPU 0
    sharing = (False, True) if args.redis else (False,)
    tracing = (False, True) if args.traces else (False,)
    recording = (False, True) if args.recording else (False,)
    carriers = list(dict.fromkeys(["twilio", *args.carrier]))  # Twilio first: the others are compared to it
    named = carriers != ["twilio"]  # the carrier leads each column's name once there is a choice
    combos = [(d, c, r, h, t, rec, car) for d in args.dialect for c in args.codec for r in sharing
              for h in args.history for t in tracing for rec in recording for car in carriers]
    runs: dict[tuple, list[dict]] = {combo: [] for combo in combos}
    # Run i of every configuration, then run i+1 of each: on a machine others use too, a busy
    # spell then weighs on the configurations alike instead of on one.
    for _ in range(args.runs):
        for dialect, codec, redis, history, traces, recorded, carrier in combos:
            profile = f"{args.profile}.{carrier}.{dialect}.{codec}" if args.profile else None
            run = run_one(codec, args.calls, args.seconds, profile, args.pin, dialect, args.instances, redis,
                          history, traces, recorded, carrier, named)
            # Measured with the other processes gone, so they do not compete for the CPU.
            run["conv_up_us"], run["conv_down_us"] = conversion_cost_us(codec)
            runs[(dialect, codec, redis, history, traces, recorded, carrier)].append(run)
            if args.json:
                print(json.dumps(run))
    print_table(with_ratios([{k: (statistics.median(r[k] for r in done) if not isinstance(done[0][k], str)
                                  else done[0][k]) for k in done[0]} for done in runs.values()]))


def platform_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
