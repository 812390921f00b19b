"""Tools the model can call: one small registry of name → (declaration, handler).

A handler is pure: it gets the parsed arguments and the call's profile, and returns what to
answer the model and what to do once the caller has heard everything the agent said (hang up,
transfer). It never picks a phone number the profile does not list.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from telephony.core.actions import Action, HangUp, Transfer
from telephony.wire.realtime import Tool

if TYPE_CHECKING:
    from telephony.core.profile import Profile

E164 = re.compile(r"\+[1-9][0-9]{6,14}")  # use fullmatch: `$` also matches before a final newline


@dataclass(frozen=True)
class ToolResult:
    output: dict[str, Any]  # sent back as the function_call_output
    after_playout: Action | None = None  # done once the caller has heard the agent's last words

    @property
    def failed(self) -> bool:
        return "error" in self.output


Handler = Callable[[dict[str, Any], "Profile"], ToolResult]


def end_call(args: dict[str, Any], profile: "Profile") -> ToolResult:
    reason = str(args.get("reason") or "the agent ended the call")[:200]
    return ToolResult({"ok": True, "note": "The call ends as soon as your goodbye has been heard."},
                      HangUp(f"end_call: {reason}"))


def transfer_call(args: dict[str, Any], profile: "Profile") -> ToolResult:
    wanted = str(args.get("destination") or "").strip()
    targets = profile.transfer_targets
    number = targets.get(wanted) or (wanted if wanted in targets.values() else None)
    if number is None:
        return ToolResult({"error": f"cannot transfer to {wanted!r}: allowed destinations are "
                                    f"{', '.join(sorted(targets)) or 'none'}"})
    return ToolResult({"ok": True, "note": f"Transferring to {wanted} once you finish speaking."},
                      Transfer(number))


REGISTRY: dict[str, tuple[Tool, Handler]] = {
    "end_call": (Tool(
        "end_call",
        "Hang up the phone call. Call this when the conversation is over, after saying goodbye.",
        {"type": "object", "properties": {"reason": {"type": "string",
                                                     "description": "Why the call is ending."}}}),
        end_call),
    "transfer_call": (Tool(
        "transfer_call",
        "Transfer the caller to a person. Only the destinations listed in the enum are possible.",
        {"type": "object", "properties": {"destination": {"type": "string"}},
         "required": ["destination"]}),
        transfer_call),
}


def declarations(profile: "Profile") -> tuple[Tool, ...]:
    """The profile's tools as the model sees them (transfer lists its destinations)."""
    declared = []
    for name in profile.tool_names:
        tool, _ = REGISTRY[name]
        if name == "transfer_call":
            if not profile.transfer_targets:
                continue
            params = json.loads(json.dumps(tool.parameters))
            params["properties"]["destination"]["enum"] = sorted(profile.transfer_targets)
            tool = Tool(tool.name, tool.description, params)
        declared.append(tool)
    return tuple(declared)


def dispatch(name: str, arguments: str, profile: "Profile") -> ToolResult:
    if name not in REGISTRY or name not in profile.tool_names:
        return ToolResult({"error": f"unknown tool {name!r}"})
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        return ToolResult({"error": "arguments are not valid JSON"})
    if not isinstance(args, dict):
        return ToolResult({"error": "arguments must be a JSON object"})
    return REGISTRY[name][1](args, profile)
