"""Python tools for tests/test_tools.py, loaded by the app as "tool_functions:<name>"."""

from __future__ import annotations

import asyncio
import threading

calls: list[tuple[str, object, dict]] = []  # (tool, call context, arguments)


async def check_stock(call, item: str) -> dict:
    await asyncio.sleep(0.05)
    calls.append(("check_stock", call, {"item": item}))
    return {"item": item, "units": 3}


def book_table(call, day: str, people: int) -> dict:
    # Sync tools run in a worker thread, off the event loop that carries the audio.
    calls.append(("book_table", call, {"day": day, "people": people,
                                       "thread": threading.current_thread() is not threading.main_thread()}))
    if people > 8:
        raise ValueError("no table for more than 8")
    return {"booked": True, "day": day}


stuck_release = threading.Event()


def stuck(call) -> dict:
    """A sync tool that hangs (a stuck database call) until the test lets it go."""
    stuck_release.wait(30)
    return {"late": True}
