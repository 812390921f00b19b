"""Groups a py-spy profile of the server by concern: python benchmarks/profile_summary.py FILE...

FILE is raw collapsed stacks (`py-spy record --native -f raw`, which `load.py --profile` runs).
Idle time (the event loop waiting in epoll) is left out: shares are of the server's busy time.
Each sample counts once, for the innermost frame that matches a concern.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

# First match from the innermost frame outwards wins: (label, regex over "function (file:line)").
GROUPS = [
    ("socket syscalls (send, write, read)", r"^(send|write|read|recv|writev|sendto|recvfrom|sendmsg) \(libc"),
    ("JSON (orjson, json)", r"orjson|json"),
    ("base64", r"binascii|base64"),
    ("audio conversion (numpy, audioop)", r"numpy|audioop|_multiarray|telephony/core/audio\.py|blas"),
    ("websocket framing (direct lane, picows, websockets)", r"direct_lane\.py|picows|websockets/|apply_mask"),
    ("call core + wire parsing", r"telephony/(core|wire)/(call|playout|twilio|realtime|realtime_beta|realtime_ga|actions)\.py"),
    ("bridge + telemetry + metrics", r"telephony/(serve|ops)/(bridge|telemetry|metrics|records|logs)\.py"),
    ("Realtime client", r"telephony/serve/realtime_client\.py"),
    ("uvicorn / starlette", r"uvicorn/|starlette/"),
    ("event loop (uvloop, libuv, asyncio tasks)",
     r"uv_|uv__|loop\.c|Loop_|Handle__|asyncio|task_step|_asynciomodule|selector_transport|aiofastnet"),
]


def shares(path: str) -> tuple[Counter, int]:
    counts: Counter = Counter()
    busy = 0
    with open(path) as lines:
        for line in lines:
            stack, n = line.rsplit(" ", 1)
            frames = stack.split(";")
            if "epoll" in frames[-1]:
                continue  # waiting for the next event
            busy += int(n)
            label = next((name for frame in reversed(frames) for name, rx in GROUPS if re.search(rx, frame)),
                         "other")
            counts[label] += int(n)
    return counts, busy


def main(paths: list[str]) -> None:
    for path in paths:
        counts, busy = shares(path)
        print(f"{path}: {busy} busy samples")
        for label, n in counts.most_common():
            print(f"  {100 * n / max(busy, 1):5.1f} %  {label}")


if __name__ == "__main__":
    main(sys.argv[1:])
