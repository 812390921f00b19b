"""What the call history costs per call, measured directly: calls' records fed through the
recorder into the writer and a real database, the process's CPU time (the driver's threads
included) divided by the calls' seconds. load.py measures the same end to end, where the machine's
noise is larger than this figure.

    python benchmarks/history_cost.py                      # SQLite in a scratch directory
    python benchmarks/history_cost.py --database-url postgresql://user@127.0.0.1:5432/db

The records follow load.py's callers: each call's caller talks over the agent every 4 s (a
barge-in, a pause decided as an interruption, the agent's cut turn, the caller's turn, the answer's
first audio), 50 agent frames a second checked by the observer's hook.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony.history.database import database_for, ensure_schema  # noqa: E402
from telephony.history.recorder import CallHistory  # noqa: E402
from telephony.history.writer import HistoryWriter  # noqa: E402

CYCLE_S = 4.0
FRAMES_PER_S = 50


class NoHistory:
    """The same loop with nothing recorded: what pacing the calls costs by itself."""

    awaiting_audio = False

    def record(self, kind, data) -> None:
        pass


async def run(database, calls: int, seconds: float, recorded: bool) -> tuple[float, int]:
    """Real time, paced per 20 ms frame (the writer gathers rows as it would under real calls);
    returns the CPU seconds spent and the rows written."""
    writer = HistoryWriter(database)
    clock = [0.0]
    histories = ([CallHistory(writer, "twilio", "beta", clock=lambda: clock[0]) for _ in range(calls)]
                 if recorded else [NoHistory() for _ in range(calls)])
    cpu0, started = time.process_time(), time.perf_counter()
    for n, history in enumerate(histories):
        if recorded:
            history.start(f"CA{n:032d}", f"MZ{n:032d}", {"from": "+15550001111", "to": "+15550002222"}, "agent")
    step = 1 / FRAMES_PER_S
    for tick in range(int(seconds * FRAMES_PER_S)):
        clock[0] = tick * step
        await asyncio.sleep(max(0.0, started + clock[0] - time.perf_counter()))
        phase = clock[0] % CYCLE_S
        for history in histories:
            if history.awaiting_audio:  # what CallObserver.sent does per agent frame
                history.audio_sent(clock[0] - 0.001, clock[0])
            if abs(phase - 0.5) < step / 2:
                item = f"item_{tick}"
                history.record("barge_in", {"item_id": item, "heard_ms": 480})
                history.record("speech_stopped", {"item_id": f"caller_{tick}", "audio_end_ms": 1000})
                history.record("transcript", {"speaker": "agent", "item_id": item, "text": "Scripted ",
                                              "at": clock[0], "interrupted": True, "heard_ms": 480})
                history.record("interruption", {"decision": "stopped", "paused_ms": 400, "speech_ms": 500,
                                                "transcript": "a tone", "item_id": f"caller_{tick}",
                                                "heard_ms": {item: 480}})
                history.record("transcript", {"speaker": "caller", "item_id": f"caller_{tick}",
                                              "text": "a 500 Hz tone for 0.5 s", "at": clock[0]})
    for history in histories:
        history.record("end", {"reason": "caller hung up", "abnormal": False})
        if recorded:
            history.close()
    await writer.flush(60)
    cpu = time.process_time() - cpu0
    await writer.close()
    return cpu, writer.stats.written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='history-cost-')}/telephony.sqlite3"
    database = database_for(url)
    ensure_schema(database)
    base, _ = asyncio.run(run(database, args.calls, args.seconds, recorded=False))
    cpu, rows = asyncio.run(run(database, args.calls, args.seconds, recorded=True))
    extra = cpu - base
    print(f"{database.describe()}: {args.calls} calls × {args.seconds:g} s, {rows} rows; CPU {cpu:.3f} s with "
          f"the history, {base:.3f} s without: {1e6 * extra / max(rows, 1):.0f} µs per row, "
          f"{100 * extra / (args.calls * args.seconds):.4f} % of a core per call")


if __name__ == "__main__":
    main()
