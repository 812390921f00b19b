"""Business tool calls in flight: what the model asked, when, and whether it was told to hold on.

The call core starts a tool (a ``RunTool`` action), answers the model when the shell brings the
output back, and, for a slow tool, asks the model once for a short holding phrase.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from telephony.core.function_tools import FunctionTool

FILLER_INSTRUCTIONS = ("A tool you called is still working. In a few words, tell the caller you are still "
                       "on it. Do not call any tool and do not make up its result.")
MAX_OUTPUT_CHARS = 64 * 1024  # what the model is given of one tool's output, at most


@dataclass
class ToolCall:
    call_id: str
    tool: FunctionTool
    arguments: dict[str, Any]
    started: float
    session: int  # the Realtime session it was called in (a reconnect starts a new one)
    filler_asked: bool = False


def parse_arguments(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The model's JSON arguments as an object, or why they are not one."""
    try:
        args = json.loads(text or "{}")
    except ValueError:
        return None, "arguments are not valid JSON"
    if not isinstance(args, dict):
        return None, "arguments must be a JSON object"
    return args, None


def output_text(output: Any) -> str:
    """A tool's output as the function_call_output string the model reads."""
    text = json.dumps(output, ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_OUTPUT_CHARS:
        return json.dumps({"error": f"the tool's output is larger than {MAX_OUTPUT_CHARS} characters"})
    return text


class PendingTools:
    def __init__(self) -> None:
        self._calls: dict[str, ToolCall] = {}

    def start(self, call: ToolCall) -> None:
        self._calls[call.call_id] = call

    def finish(self, call_id: str) -> ToolCall | None:
        return self._calls.pop(call_id, None)

    def running(self) -> list[ToolCall]:
        return list(self._calls.values())

    def due_for_filler(self, now: float, after_s: float) -> list[ToolCall]:
        """Tools running longer than ``after_s`` whose caller has not been told to hold on."""
        return [c for c in self._calls.values() if not c.filler_asked and now - c.started >= after_s]

    def __len__(self) -> int:
        return len(self._calls)
