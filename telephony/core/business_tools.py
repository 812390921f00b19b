"""The call's business tools (HTTP, Python, MCP, declared in the profile or found at call time):
the model calls one, the shell runs it off the audio path (``RunTool``), and its output goes back
to the model when it comes, with a holding phrase if it is slow.

Built-in tools (end_call, transfer_call, …) answer at once in ``core.call``; this is the rest.
A mixin of ``core.call.Call``: it works on the call's own state.
"""

from __future__ import annotations

import logging
from typing import Any

from telephony.core import tools
from telephony.core.actions import Action, Record, RunTool, ToRealtime
from telephony.core.function_tools import FunctionTool
from telephony.core.tool_calls import FILLER_INSTRUCTIONS, ToolCall, output_text, parse_arguments
from telephony.wire import realtime as rt

log = logging.getLogger("telephony.call")


class BusinessTools:
    """Run by the shell, answered when their output comes back."""

    def add_function_tools(self, found: list[FunctionTool]) -> list[Action]:
        """Tools found at call time (an MCP server's), offered when the session is configured, or
        at once if it already is (a call without media: its session came with the accept)."""
        added = False
        for tool in found:
            if tool.name in self._function_tools or tool.name in tools.REGISTRY:
                log.warning("call %s: tool %r is declared twice; the first one is kept", self.call_sid, tool.name)
                continue
            self._function_tools[tool.name] = tool
            added = True
        if not added:
            return []
        if self.realtime_open and self._session_ready:
            if self.carries_media and not self.capabilities.late_tools:
                log.warning("call %s: tools found after the session opened cannot be added in this dialect",
                            self.call_sid)
                return []
            return [ToRealtime(rt.UpdateTools(self.session_config()))]
        self._tools_unsent = not self.carries_media  # a media session is configured with them as it opens
        return []

    def _start_tool(self, call_id: str, tool: FunctionTool, arguments: str, now: float) -> list[Action]:
        args, problem = parse_arguments(arguments)
        if problem is None:
            problem = tool.check_arguments(args)
        if problem is not None:  # the model is told and may try again; nothing reaches the business
            # Not the problem itself: a validator's message quotes the value (a card number, say).
            log.info("call %s: tool %s called with invalid arguments", self.call_sid, tool.name)
            output = {"error": f"invalid arguments: {problem}"}
            return self._tool_answer(call_id, tool.name, arguments, output, "invalid_arguments", 0.0)
        self._tool_calls.start(ToolCall(call_id, tool, args, now, self._session_number()))
        return [RunTool(call_id, tool, args)]

    def on_tool_result(self, call_id: str, output: Any, now: float, outcome: str = "ok") -> list[Action]:
        """The shell ran a tool: ``output`` is its JSON output (``{"error": ...}`` unless ``outcome`` is "ok")."""
        running = self._tool_calls.finish(call_id)
        if running is None or self.ended:
            return []
        log.info("call %s: tool %s → %s (%.0f ms)", self.call_sid, running.tool.name, outcome,
                 (now - running.started) * 1000)
        return self._tool_answer(call_id, running.tool.name, running.arguments, output, outcome,
                                 now - running.started, same_session=running.session == self._session_number())

    def _session_number(self) -> int:
        """Which model session a tool call belongs to. A sideband reconnects to the same session
        (the server keeps it), so its tool calls' ids stay valid across a reconnect."""
        return self._sessions if self.carries_media else 1

    def _tool_answer(self, call_id: str, name: str, arguments: Any, output: Any, outcome: str,
                     latency_s: float, same_session: bool = True) -> list[Action]:
        """The output to the model, then a response about it (after the one in progress, if any)."""
        result_key = "output" if outcome == "ok" else "error"
        result = output if outcome == "ok" else (output.get("error") if isinstance(output, dict) else output)
        # A session reopened since the call does not know its call id: the output goes as text.
        answer = (rt.AddFunctionOutput(call_id, output_text(output)) if same_session else
                  rt.AddUserText(f"(The {name} tool you called has answered: {output_text(output)})"))
        actions: list[Action] = [
            ToRealtime(answer),
            Record("tool_call", {"name": name, "arguments": arguments, result_key: result,
                                 "outcome": outcome, "latency_ms": round(latency_s * 1000, 1)})]
        if not self._agent_busy():
            actions.append(self._create_response())
        else:
            self._respond_when_done = True
        return actions

    def _tool_filler(self, now: float) -> list[Action]:
        """A tool slower than the profile's filler delay: the model says a holding phrase, once."""
        if not len(self._tool_calls) or not self.realtime_open:
            return []
        due = self._tool_calls.due_for_filler(now, self.profile.filler_after_ms / 1000)
        if not due or self._agent_busy():
            return []  # the agent is talking already: ask once it is quiet
        for running in due:
            running.filler_asked = True
        return [self._create_response(FILLER_INSTRUCTIONS),
                Record("tool_filler", {"names": [r.tool.name for r in due]})]
