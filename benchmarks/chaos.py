"""The fault suite, long: the real service (two instances, one with two workers, a real redis-server)
under injected faults (hangs, resets, slow answers, restarts of Redis, Twilio REST, the model and a
tool server; SIGTERM handoffs; a worker kill) while simulated callers place calls continuously.
Prints the faults injected and the invariants over everything the service wrote.

    PYTHONPATH=$PWD python benchmarks/chaos.py --duration 180 --calls 3

Exit status 1 when an invariant is broken."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from telephony.offline.chaos import ChaosConfig, run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of calls (default 180)")
    parser.add_argument("--calls", type=int, default=3, help="calls in progress at once (default 3)")
    parser.add_argument("--call-seconds", type=float, default=8.0, help="each call's length (default 8)")
    parser.add_argument("--faults-per-kind", type=int, default=2,
                        help="hangs, resets, slows and restarts per target (default 2)")
    parser.add_argument("--sigterms", type=int, default=2, help="deploys: SIGTERM to instance A (default 2)")
    parser.add_argument("--worker-kills", type=int, default=1, help="SIGKILLs of a worker of B (default 1)")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--show-excused", type=int, default=0, help="print this many excused examples each")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and records here")
    args = parser.parse_args()
    config = ChaosConfig(duration_s=args.duration, concurrent_calls=args.calls, call_s=args.call_seconds,
                         faults_per_kind=args.faults_per_kind, sigterms=args.sigterms,
                         worker_kills=args.worker_kills, seed=args.seed, workdir=args.workdir)
    report = asyncio.run(run_chaos(config))
    print(report.summary())
    print()
    print(report.fault_table())
    print()
    print(report.invariant_table(examples=5, excused_examples=args.show_excused))
    return 0 if all(inv.held for inv in report.invariants) else 1


if __name__ == "__main__":
    sys.exit(main())
