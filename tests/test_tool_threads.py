"""Issue 22 item 11 (tools): timed-out sync tools hold their own bounded threads, never asyncio's
default pool, and when all of those are held a new call fails at once with a clear outcome."""

from __future__ import annotations

import asyncio

import tool_functions
from helpers import wait_until

from telephony.core.function_tools import FunctionTool
from telephony.serve.tools import CallContext, ToolRunner, python_tool

STUCK = FunctionTool("python", "stuck", "hangs", {"type": "object", "properties": {}}, "tool_functions:stuck",
                     timeout_s=0.2)


async def test_timed_out_sync_tools_leave_the_default_pool_free_and_fail_fast_when_all_held():
    python_tool.THREADS.resize(4)
    tool_functions.stuck_release.clear()
    runner = ToolRunner()
    session = runner.session(CallContext.of("CA" + "7" * 32, {}, "agent"))
    try:
        # More timed-out calls than asyncio's default pool has threads on this machine (6 on 2 CPUs).
        outcomes = [await runner.run(session, STUCK, {}) for _ in range(10)]
        # Before: each held a default-pool thread, and this waited until one of them returned.
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 1), 2) == 1
        assert python_tool.THREADS.busy == 4
    finally:
        tool_functions.stuck_release.set()
        await session.aclose()
    assert [outcome for _, outcome in outcomes] == ["timeout"] * 4 + ["error"] * 6
    assert outcomes[-1][0] == {"error": "busy: all 4 tool threads are still running earlier calls"}
    # The threads are freed as their tools return, and the pool serves again.
    await wait_until(lambda: python_tool.THREADS.busy == 0, "the stuck tools' threads to be freed")
    assert (await runner.run(session, STUCK, {}))[1] == "ok"


def test_a_process_with_a_hung_sync_tool_still_exits():
    """A worker that stops must not wait for a tool that will never return: the tools' threads are
    daemons (a pool's threads are joined at interpreter exit)."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import asyncio, threading\n"
        "from telephony.serve.tools import python_tool\n"
        "async def main():\n"
        "    hang = threading.Event()\n"
        "    try:\n"
        "        await asyncio.wait_for(python_tool.THREADS.run(hang.wait), 0.2)\n"
        "    except TimeoutError:\n"
        "        print('timed out', flush=True)\n"
        "asyncio.run(main())\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and "timed out" in done.stdout, done.stderr
