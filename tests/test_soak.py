"""A bounded soak: short calls one after another and a burst at once leave nothing behind.

CI sizes by default; SOAK_SEQUENTIAL / SOAK_CONCURRENT change them. The full-size run
(500 and 100) is ``python benchmarks/soak.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import soak  # noqa: E402

SEQUENTIAL = int(os.environ.get("SOAK_SEQUENTIAL", "100"))
CONCURRENT = int(os.environ.get("SOAK_CONCURRENT", "50"))


async def test_soak_leaves_no_tasks_sockets_or_memory_behind():
    r = await soak.soak(SEQUENTIAL, CONCURRENT)
    before, after = r["before"], r["after"]
    print(f"\nsoak: {SEQUENTIAL} sequential in {r['sequential_s']:.1f} s, {CONCURRENT} concurrent "
          f"(peak {r['peak_concurrent']}) in {r['concurrent_s']:.1f} s\n  before {before}\n  after  {after}")
    assert r["served"] == r["calls"] and r["leftover_calls"] == 0
    assert r["peak_concurrent"] >= CONCURRENT * 0.8  # they really overlapped
    # No task the calls started is still alive; every socket opened was closed.
    assert not after.new_tasks(before) and not r["after_sequential"].new_tasks(before)
    assert after.tasks <= before.tasks
    assert after.sockets == before.sockets and r["after_sequential"].sockets == before.sockets
    assert after.rss_kb - before.rss_kb < 5 * 1024
