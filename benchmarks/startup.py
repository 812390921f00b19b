"""Time from `telephony serve` starting to its first /healthz 200, per WEB_CONCURRENCY.

    python benchmarks/startup.py            # 1 and 2 workers, 3 starts each
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(workers: int) -> float:
    port = free_port()
    env = dict(os.environ, PORT=str(port), HOST="127.0.0.1", WEB_CONCURRENCY=str(workers),
               REALTIME_API_KEY="startup-check", LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "telephony", "serve"], env=env, cwd=ROOT)
    try:
        while time.monotonic() - started < 30:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5).read()
                return time.monotonic() - started
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the server did not answer within 30 s")
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    for workers in (1, 2):
        times = [start_once(workers) for _ in range(3)]
        print(f"WEB_CONCURRENCY={workers}: median {statistics.median(times):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times)})")
