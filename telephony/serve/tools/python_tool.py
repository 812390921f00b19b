"""Python tools: ``package.module:callable``, sync (run in a thread of their own) or async.

It is called as ``function(call, **arguments)``: ``call`` is the ``CallContext``; what it returns
(JSON-serialisable) is the output. An exception becomes ``{"error": ...}`` for the model.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Callable

from telephony.core.function_tools import FunctionTool
from telephony.core.profile import ProfileError
from telephony.serve.tools.context import CallContext, ToolFailure, ToolSession

log = logging.getLogger("telephony.tools")


class ToolThreads:
    """Sync tools' own bounded pool, apart from asyncio's default one.

    A sync tool that times out keeps running in its thread (Python cannot stop a thread). In the
    default pool that thread would starve everything else run there; here it only holds one of the
    tools' own threads until it returns, and when every one is held a new call fails at once
    ("busy") instead of queueing behind them past its own timeout."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.busy = 0  # threads running a tool, timed out or not
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def resize(self, size: int) -> None:
        with self._lock:
            if size != self.size:
                self.size, self._pool = size, None  # running threads finish in the old pool

    async def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self.busy >= self.size:
                raise ToolFailure(f"busy: all {self.size} tool threads are still running earlier calls")
            self.busy += 1
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="tool")
            pool = self._pool
        future = pool.submit(functools.partial(function, *args, **kwargs))
        future.add_done_callback(self._freed)
        return await asyncio.wrap_future(future)

    def _freed(self, _: Future) -> None:
        with self._lock:
            self.busy -= 1


THREADS = ToolThreads()  # sized by TOOL_THREADS when the app is built


@lru_cache(maxsize=None)
def resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ProfileError(f"python tool function {target!r} cannot be loaded: {exc}") from None
    if not callable(found):
        raise ProfileError(f"python tool function {target!r} is not callable")
    return found


async def run(tool: FunctionTool, arguments: dict[str, Any], context: CallContext, session: ToolSession) -> Any:
    function = resolve(tool.target)
    try:
        if inspect.iscoroutinefunction(function):
            result = await function(context, **arguments)
        else:  # a blocking function must not stall the calls on this event loop
            result = await THREADS.run(function, context, **arguments)
            if inspect.isawaitable(result):
                result = await result
    except ToolFailure:
        raise
    except Exception as exc:
        log.warning("call %s: python tool %s raised", context.call_sid, tool.name, exc_info=True)
        raise ToolFailure(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return result
