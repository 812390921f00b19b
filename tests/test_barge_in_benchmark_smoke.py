"""A tiny run of the barge-in benchmark (one clip of each class, no recognizer): it generates its
corpus, places the calls, and prints its table. The figures are the benchmark's business."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox")
def test_barge_in_benchmark_smoke():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "barge_in.py"), "--quick", "--max-clips", "4",
                           "--asr", "none"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("interruption") and " after " in line for line in lines), done.stdout
    assert any(line.startswith("backchannel ") for line in lines) and "false stops" in done.stdout
