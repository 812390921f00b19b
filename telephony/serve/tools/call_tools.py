"""One call's business tools, whichever shell carries the call (a Twilio stream, a SIP sideband).

The app-wide ``ToolRunner`` runs tools and lists MCP servers; this holds what belongs to one call:
its tool session (opened by its first tool, closed with the call) and whether its MCP servers have
been listed yet. Both shells use it, so a tool runs the same on every route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from telephony.core.actions import RunTool
from telephony.core.function_tools import FunctionTool
from telephony.serve.tools.context import CallContext, ToolSession

if TYPE_CHECKING:  # the package's __init__ imports this module
    from telephony.core.call import Call
    from telephony.serve.tools import ToolRunner


class CallTools:
    def __init__(self, runner: "ToolRunner", call: "Call") -> None:
        self.runner = runner
        self.call = call
        self._session: ToolSession | None = None
        self._listed = False

    async def discover(self) -> list[FunctionTool]:
        """The tools of the call's MCP servers that we call ourselves, listed once per call (a
        reconnect finds none new); a server that cannot be listed is left out."""
        servers = [s for s in self.call.profile.mcp_servers if s.run_by == "bridge"]
        if not servers or self._listed:
            return []
        self._listed = True
        return await self.runner.discover(servers, self.call.call_sid or "?")

    async def run(self, action: RunTool) -> tuple[Any, str]:
        """(output, outcome), as ``ToolRunner.run`` answers: never raises for a failing tool."""
        return await self.runner.run(self._open(), action.tool, action.arguments)

    def _open(self) -> ToolSession:
        if self._session is None:
            call = self.call
            self._session = self.runner.session(CallContext.of(call.call_sid or "?", call.parameters,
                                                               call.profile.name))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.aclose()
