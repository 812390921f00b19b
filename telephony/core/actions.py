"""Actions: what the call core asks its shells to do. Plain data; the shells carry them out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from telephony.core.function_tools import FunctionTool
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw


@dataclass(frozen=True)
class ToTwilio:
    message: tw.TwilioMessage


@dataclass(frozen=True)
class ToRealtime:
    command: rt.Command


@dataclass(frozen=True)
class OpenRealtime:
    """Connect upstream now (the stream has started and its parameters are known)."""


@dataclass(frozen=True)
class EndStream:
    """Close both sockets; Twilio then runs the TwiML after <Connect> (the spoken fallback)."""

    reason: str
    abnormal: bool = False
    policy_violation: bool = False  # refused (bad token…): close with 1008, open nothing


@dataclass(frozen=True)
class Record:
    """A fact for the call record and metrics."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HangUp:
    """End the call through the REST API of its carrier (Twilio, or OpenAI for its SIP route)."""

    reason: str  # "end_call: <the model's words>": only the part before the colon is ours to log
    abnormal: bool = False  # a call ended because it could no longer be served (its record says so)

    @property
    def loggable(self) -> str:
        """The reason without what the model said (it may repeat what the caller said)."""
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True)
class Transfer:
    """Send the caller to this E.164 number or sip: URI (from the profile's allow-list): a <Dial>,
    or with ``refer`` a SIP REFER (the caller's own SIP side reconnects the call)."""

    number: str
    refer: bool = False


@dataclass(frozen=True)
class RunTool:
    """Run a business tool off the audio path; its output comes back through ``Call.on_tool_result``."""

    call_id: str
    tool: FunctionTool
    arguments: dict[str, Any]


Action = Union[ToTwilio, ToRealtime, OpenRealtime, EndStream, Record, HangUp, Transfer, RunTool]
