"""Groups a cProfile dump of the server by concern: python benchmarks/profile_summary.py FILE."""

from __future__ import annotations

import pstats
import sys

# First match wins: (label, substrings of "file:function").
GROUPS = [
    ("idle (epoll wait)", ["select.epoll"]),
    ("socket syscalls (send/recv)", ["_socket.socket' objects}", "socket.socket.send", "'recv' of", "'send' of"]),
    ("JSON encode/decode", ["json/"]),
    ("base64", ["binascii", "base64"]),
    ("audio conversion (numpy, audioop)", ["telephony/audio.py", "numpy", "audioop", "'convolve'", "astype",
                                          "'clip'", "'rint'", "tobytes", "frombuffer", "concatenate"]),
    ("websocket framing (websockets)", ["websockets/"]),
    ("ASGI server (uvicorn, starlette)", ["uvicorn/", "starlette/"]),
    ("metrics (prometheus_client)", ["prometheus_client/"]),
    ("call core + wire (telephony)", ["telephony/call.py", "telephony/playout.py", "twilio_wire.py",
                                      "realtime.py", "realtime_beta.py", "realtime_ga.py"]),
    ("bridge + telemetry (telephony)", ["telephony/bridge.py", "telephony/telemetry.py", "telephony/records.py"]),
    ("asyncio event loop", ["asyncio/", "_contextvars", "selectors.py", "'_asyncio."]),
]


def label_of(file: str, func: str) -> str | None:
    key = f"{file}:{func}"
    return next((g for g, needles in GROUPS if any(n in key for n in needles)), None)


def main(path: str) -> None:
    stats = pstats.Stats(path).stats
    totals: dict[str, float] = {}
    for (file, line, func), (cc, nc, tt, ct, callers) in stats.items():
        label = label_of(file, func)
        if label is None and callers:
            # A builtin (len, isinstance, dict.get…) counts for whoever called it, pro rata.
            spent = sum(c[2] for c in callers.values()) or 1.0
            for (cfile, _, cfunc), c in callers.items():
                owner = label_of(cfile, cfunc) or "other"
                totals[owner] = totals.get(owner, 0.0) + tt * c[2] / spent
            continue
        totals[label or "other"] = totals.get(label or "other", 0.0) + tt
    busy = sum(v for k, v in totals.items() if not k.startswith("idle"))
    print(f"{'':36} {'s':>7} {'% of busy':>9}")
    for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        share = "" if label.startswith("idle") else f"{100 * seconds / busy:8.1f}%"
        print(f"{label:36} {seconds:7.2f} {share:>9}")


if __name__ == "__main__":
    main(sys.argv[1])
