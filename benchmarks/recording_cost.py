"""What recording costs per call, measured directly: N calls' recorders (the tape on the audio
path, the writer task and its spool file, the file store's rename at the end) fed 20 ms frames
both ways at real time, against the same paced loop with nothing recorded; the process's CPU
time (the writer's threads included) divided by the calls' seconds. load.py --recording measures
the same end to end, where the machine's noise is larger than this figure.

    python benchmarks/recording_cost.py                 # 50 calls × 60 s to a scratch directory
    python benchmarks/recording_cost.py --calls 100 --seconds 30

Each call's agent talks for 4 s of every 6 and the caller talks over it once per cycle (a
Twilio clear), as load.py's callers do; RSS is read before the calls and at their peak.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony.serve.recordings import Recordings, open_store  # noqa: E402

FRAME = base64.b64encode(bytes(range(0, 160))).decode()  # 20 ms of μ-law, as Twilio carries it
FRAMES_PER_S = 50
CYCLE_TICKS = 300  # 6 s


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def run(folder: str, calls: int, seconds: float, recorded: bool) -> tuple[float, int, list[str]]:
    """Real time, paced per 20 ms frame; returns the CPU seconds, the RSS growth (KB) at the
    calls' peak and the recordings' names."""
    loop = asyncio.get_running_loop()
    recordings = Recordings(open_store(f"file://{folder}"))
    cpu0, started, rss0 = time.process_time(), loop.time(), rss_kb()
    recorders = [recordings.start(f"CA{n:032x}", f"MZ{n:032x}", started) for n in range(calls)] if recorded else []
    step, peak = 1 / FRAMES_PER_S, 0
    for tick in range(int(seconds * FRAMES_PER_S)):
        await asyncio.sleep(max(0.0, started + tick * step - loop.time()))
        now, phase = loop.time(), tick % CYCLE_TICKS
        for recorder in recorders:
            tape = recorder.tape
            tape.caller(FRAME, tick * 20, now)
            if phase < 200:
                tape.agent(FRAME, now)
            if phase == 100:
                tape.cleared(now)
            recorder.tick(now)
        if tick % FRAMES_PER_S == 0:
            peak = max(peak, rss_kb() - rss0)
    names = [await recorder.close(loop.time()) for recorder in recorders]
    return time.process_time() - cpu0, peak, [n for n in names if n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="recording-cost-")
    base, _, _ = asyncio.run(run(folder, args.calls, args.seconds, recorded=False))
    cpu, peak_kb, names = asyncio.run(run(folder, args.calls, args.seconds, recorded=True))
    size = sum((Path(folder) / name).stat().st_size for name in names)
    extra = cpu - base
    print(f"{args.calls} calls × {args.seconds:g} s recorded to {folder}: {len(names)} recordings, "
          f"{size / len(names) / (args.seconds / 60) / 1e6:.2f} MB per call-minute; CPU {cpu:.3f} s recorded, "
          f"{base:.3f} s not: {100 * extra / (args.calls * args.seconds):.4f} % of a core per call; "
          f"RSS {peak_kb / args.calls:.0f} KB per call at the peak (max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
