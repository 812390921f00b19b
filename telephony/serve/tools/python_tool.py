"""Python tools: ``package.module:callable``, sync (run in a thread of their own) or async.

It is called as ``function(call, **arguments)``: ``call`` is the ``CallContext``; what it returns
(JSON-serialisable) is the output. An exception becomes ``{"error": ...}`` for the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import threading
from functools import lru_cache
from typing import Any, Callable

from telephony.core.function_tools import FunctionTool
from telephony.core.profile import ProfileError
from telephony.serve.tools.context import CallContext, ToolFailure, ToolSession

log = logging.getLogger("telephony.tools")


class ToolThreads:
    """Sync tools' own threads, at most ``size`` at once, apart from asyncio's default pool.

    A sync tool that times out keeps running in its thread (Python cannot stop a thread). In the
    default pool that thread would starve everything else run there; here it only holds one of the
    tools' own threads until it returns, and when every one is held a new call fails at once
    ("busy") instead of queueing behind them past its own timeout. The threads are daemons: a
    pool's threads are joined at interpreter exit, so one hung tool would keep a stopping worker
    alive past its drain."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.busy = 0  # threads running a tool, timed out or not
        self._lock = threading.Lock()

    def resize(self, size: int) -> None:
        with self._lock:
            self.size = size  # threads running now finish as they are

    async def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self.busy >= self.size:
                raise ToolFailure(f"busy: all {self.size} tool threads are still running earlier calls")
            self.busy += 1
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        threading.Thread(target=self._work, args=(loop, answer, function, args, kwargs), name="tool",
                         daemon=True).start()
        return await answer

    def _work(self, loop: asyncio.AbstractEventLoop, answer: "asyncio.Future[Any]",
              function: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (function(*args, **kwargs), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting call, as a pool would
            outcome = (None, exc)
        finally:
            with self._lock:
                self.busy -= 1
        with contextlib.suppress(RuntimeError):  # the loop is gone (the call's process is stopping)
            loop.call_soon_threadsafe(_settle, answer, outcome)


def _settle(answer: "asyncio.Future[Any]", outcome: tuple[Any, BaseException | None]) -> None:
    if answer.done():  # the call stopped waiting (its timeout)
        return
    result, error = outcome
    if error is None:
        answer.set_result(result)
    else:
        answer.set_exception(error)


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
