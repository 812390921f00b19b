"""Running business tools for one call, off the audio path: one runner module per kind.

``RUNNERS`` maps a tool's ``kind`` (from its ``[[tools.<kind>]]`` table) to the coroutine that
runs it; a new kind is one module here plus one line in that table. Every runner's answer is
held to the same rules: JSON out, at most 64 KB, ``{"error": ...}`` for a failure or a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from telephony.core.function_tools import FunctionTool, McpServer
from telephony.core.profile import ProfileError
from telephony.core.profile_choice import Profiles
from telephony.serve.tools import http_tool, mcp_tool, python_tool
from telephony.serve.tools.call_tools import CallTools
from telephony.serve.tools.context import CallContext, ToolFailure, ToolSession

__all__ = ["RUNNERS", "CallContext", "CallTools", "ToolFailure", "ToolRunner", "ToolSession"]

log = logging.getLogger("telephony.tools")

Runner = Callable[[FunctionTool, dict[str, Any], CallContext, ToolSession], Awaitable[Any]]

RUNNERS: dict[str, Runner] = {
    "http": http_tool.run,
    "python": python_tool.run,
    "mcp": mcp_tool.run,
}

MAX_OUTPUT_BYTES = 64 * 1024
DISCOVERY_TTL_S = 60.0  # an MCP server's tool list is fetched at most this often per instance
# A server that could not list its tools is not asked again for this long: while it is down, calls
# start without its tools instead of each waiting for it.
DISCOVERY_FAILURE_TTL_S = 30.0


@dataclass
class _Listing:
    tools: list[FunctionTool]
    fetched: float
    failed: bool = False

    def fresh(self, now: float) -> bool:
        return now - self.fetched < (DISCOVERY_FAILURE_TTL_S if self.failed else DISCOVERY_TTL_S)


@dataclass
class ToolRunner:
    """App-wide: the signing secret and the MCP servers' tool lists; a ``ToolSession`` per call."""

    secret: str = field(default="", repr=False)
    _listings: dict[McpServer, _Listing] = field(default_factory=dict)
    _listing_now: dict[McpServer, "asyncio.Task[list[FunctionTool]]"] = field(default_factory=dict)

    def check(self, profiles: Profiles, dialect: str) -> None:
        """Refuses, at startup, tools that could never run here (names the profile and the tool)."""
        for profile in profiles.all():
            for tool in profile.function_tools:
                if tool.kind not in RUNNERS:
                    raise ProfileError(f"profile {profile.name!r}: no runner for {tool.kind} tools")
                if tool.kind == "http" and not self.secret:
                    raise ProfileError(f"profile {profile.name!r}: HTTP tool {tool.name!r} needs TOOLS_SECRET "
                                       f"(its requests are signed with it)")
                if tool.kind == "python":
                    python_tool.resolve(tool.target)  # raises ProfileError naming what is missing
            for server in profile.mcp_servers:
                if server.run_by == "provider" and dialect != "ga":
                    raise ProfileError(f"profile {profile.name!r}: MCP server {server.url} has run_by = "
                                       f"\"provider\", which only the GA dialect supports; use \"bridge\"")

    def session(self, context: CallContext) -> ToolSession:
        return ToolSession(context, self.secret)

    async def run(self, session: ToolSession, tool: FunctionTool, arguments: dict[str, Any]) -> tuple[Any, str]:
        """(output, outcome): outcome is "ok", "error" or "timeout"; output is ``{"error": ...}`` unless ok."""
        try:
            output = await asyncio.wait_for(RUNNERS[tool.kind](tool, arguments, session.context, session),
                                            tool.timeout_s)
            if len(json.dumps(output, ensure_ascii=False).encode()) > MAX_OUTPUT_BYTES:
                raise ToolFailure("the tool's answer is larger than 64 KB")
        except (TimeoutError, asyncio.TimeoutError):
            return {"error": f"the tool did not answer within {tool.timeout_s:g} s"}, "timeout"
        except ToolFailure as exc:
            log.warning("call %s: tool %s failed: %s", session.context.call_sid, tool.name, exc)
            return {"error": str(exc)}, "error"
        except (TypeError, ValueError) as exc:  # an output that is not JSON
            return {"error": f"the tool's answer is not JSON: {exc}"}, "error"
        except Exception as exc:  # a runner's transport failing in a way it did not name (MCP)
            log.warning("call %s: tool %s failed: %s", session.context.call_sid, tool.name, _cause(exc))
            return {"error": f"the tool failed ({_cause(exc)})"}, "error"
        return output, "ok"

    async def aclose(self) -> None:
        """Stops listings still under way (a slow server's, which calls stopped waiting for), so
        their HTTP clients close on this event loop, not in a finalizer after it."""
        tasks = list(self._listing_now.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def discover(self, servers: list[McpServer], call_sid: str) -> list[FunctionTool]:
        """The allowed tools of the MCP servers the bridge calls itself; a server that cannot be
        listed is logged and left out (the call goes on with the other tools)."""
        async def fetch(server: McpServer) -> list[FunctionTool]:
            try:
                found = await asyncio.wait_for(mcp_tool.list_tools(server), server.timeout_s)
            except Exception as exc:  # unreachable, refused, not MCP
                log.warning("call %s: cannot list the tools of MCP server %s: %s; not asked again for %g s",
                            call_sid, server.url, _cause(exc), DISCOVERY_FAILURE_TTL_S)
                self._listings[server] = _Listing([], time.monotonic(), failed=True)
                return []
            finally:
                self._listing_now.pop(server, None)
            self._listings[server] = _Listing(found, time.monotonic())
            return found

        def listing(server: McpServer) -> "asyncio.Future[list[FunctionTool]]":
            cached = self._listings.get(server)
            if cached is not None and cached.fresh(time.monotonic()):
                done: asyncio.Future[list[FunctionTool]] = asyncio.get_running_loop().create_future()
                done.set_result(cached.tools)
                return done
            if server not in self._listing_now:  # calls starting together share one listing
                self._listing_now[server] = asyncio.ensure_future(fetch(server))
            return asyncio.shield(self._listing_now[server])

        results = await asyncio.gather(*(listing(s) for s in servers))
        return [tool for found in results for tool in found]


def _cause(exc: BaseException) -> str:
    """The first real failure inside task-group wrapping (the mcp client's), by its type's name."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__
