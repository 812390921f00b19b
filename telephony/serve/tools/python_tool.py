"""Python tools: ``package.module:callable``, sync (run in a thread) or async.

It is called as ``function(call, **arguments)``: ``call`` is the ``CallContext``; what it returns
(JSON-serialisable) is the output. An exception becomes ``{"error": ...}`` for the model.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from functools import lru_cache
from typing import Any, Callable

from telephony.core.function_tools import FunctionTool
from telephony.core.profile import ProfileError
from telephony.serve.tools.context import CallContext, ToolFailure, ToolSession

log = logging.getLogger("telephony.tools")


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
            result = await asyncio.to_thread(function, context, **arguments)
            if inspect.isawaitable(result):
                result = await result
    except Exception as exc:
        log.warning("call %s: python tool %s raised", context.call_sid, tool.name, exc_info=True)
        raise ToolFailure(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return result
