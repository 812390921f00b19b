"""A tiny run of the load benchmark (2 calls, 3 s; with and without traces): it starts, measures and
reports. No figures checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_load_benchmark_smoke():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load.py"), "--calls", "2", "--seconds", "3",
                           "--codec", "g711_ulaw", "--traces"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "calls held / started" in done.stdout and "2/2" in done.stdout
    assert "CPU per call" in done.stdout and "RSS per call" in done.stdout
    assert "beta g711_ulaw db:sqlite +traces" in done.stdout  # and the same with a local OTLP receiver
