"""OpenAI's SIP route (GPT-Live calls): the webhook, the accept body, the sideband's dialect.

OpenAI answers the SIP call and plays the audio; we accept it as a Live session
(``/v1/live/sessions/{session_id}/accept|reject|refer|hangup``) and steer it over a sideband
(``/v1/live/sessions/{session_id}/attach``): no ``session.start`` there (the accept started the
session), no audio from us (SIP carries it). The sideband reflects the agent's audio with its
place on the session's timeline (``start_ms``/``end_ms``): the only sign of what the caller heard.
Facts and what is unverified: ../shared/PROTOCOLS.md, "GPT-Live over SIP".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from telephony.wire import live
from telephony.wire import realtime as rt
from telephony.wire.openai_sip import KeypadDigit
from telephony.wire.realtime import int_at, str_at

INCOMING = "live.transport.incoming"
INCOMING_DEPRECATED = "live.call.incoming"  # same data without data.type; no new subscriptions
INCOMING_TYPES = (INCOMING, INCOMING_DEPRECATED)
DEFAULT_MODEL = "gpt-live-1"  # when REALTIME_MODEL names a Realtime model (dialect not live)

name = "live_sip"
headers: dict[str, str] = {}
# No truncate, no responses for speech, and no session.start to wait for: the accept started it.
capabilities = rt.Capabilities(truncate=False, responses=False, ready_first=False, late_tools=True)


# --- Events only a Live SIP sideband sends ---


@dataclass(frozen=True)
class AgentAudioReflected:
    """The agent's audio as the SIP side sent it (``session.output_audio.delta``): its range on the
    session's timeline. The audio itself is dropped here (48 KB/s nobody plays)."""

    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class SessionClosed:
    """The session is over (``session.closed``): the caller hung up, it expired, …"""

    reason: str
    usage: dict


SidebandEvent = AgentAudioReflected | SessionClosed | KeypadDigit
# session.closed reasons that are an ordinary end of a call, not a fault.
NORMAL_CLOSE_REASONS = frozenset({"close_requested", "remote_hangup"})


def decode(text: str | bytes) -> rt.Event | AgentAudioReflected | SessionClosed | KeypadDigit:
    try:
        msg = orjson.loads(text)
    except ValueError as exc:
        raise rt.RealtimeProtocolError(f"not JSON: {exc}") from None
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "session.output_audio.delta":
        return AgentAudioReflected(int_at(msg, "start_ms"), int_at(msg, "end_ms"))
    if kind == "transport.dtmf.received":
        return KeypadDigit(str_at(msg, "event"))
    if kind == "session.started":  # on attach, probably: the session began at the accept
        return rt.Ignored(kind)
    if kind == "session.closed":
        usage = msg.get("usage") if isinstance(msg.get("usage"), dict) else {}
        return SessionClosed(str_at(msg, "reason") or "unknown", usage)
    return live.decode(text)  # transcripts, delegated tool calls, errors, reflected caller audio


def encode(command: rt.Command) -> dict[str, Any]:
    if isinstance(command, rt.CreateResponse) and command.instructions is not None:
        # The Live way to have the agent speak first (the greeting) or say a filler.
        return {"type": "session.instructions.append", "content": command.instructions, "delegation_id": None}
    if isinstance(command, (rt.ConfigureSession, rt.UpdateTools)):  # tools found after the accept
        return {"type": "session.update", "session": {"delegation": delegation(command.config)}}
    if isinstance(command, rt.AppendAudio):
        raise TypeError("a Live SIP sideband carries no audio from us")
    return live.encode(command)


def serialize(command: rt.Command) -> str:
    return orjson.dumps(encode(command)).decode()


# --- REST and websocket addresses ---


def attach_url(base_url: str, session_id: str) -> str:
    """``https://api.openai.com/v1`` → ``wss://api.openai.com/v1/live/sessions/{id}/attach``, as the
    openai package builds it (``{base_url}/live/sessions/{id}/attach``, http→ws)."""
    parts = urlsplit(base_url)
    scheme = "ws" if parts.scheme == "http" else "wss"
    return urlunsplit((scheme, parts.netloc, f"{parts.path.rstrip('/')}/live/sessions/{session_id}/attach", "", ""))


# --- The accept body ---


def delegation(config: rt.SessionConfig) -> dict[str, Any] | None:
    """The profile's tools for the Responses backend (the voice model has none)."""
    if not config.tools:
        return None
    return {"type": "responses", "responses": {
        "model": config.delegation_model, "instructions": config.instructions,
        "tools": [{"type": "function", "name": t.name, "description": t.description,
                   "parameters": t.parameters} for t in config.tools],
        "tool_choice": "auto"}}


def accept_session(config: rt.SessionConfig, model: str) -> dict[str, Any]:
    """``session`` for ``/accept``: no ``audio.format`` (SIP negotiates the codec in SDP)."""
    session: dict[str, Any] = {"type": "live", "model": model, "instructions": config.instructions,
                               "audio": {"output": {"voice": config.voice}}}
    if (tools := delegation(config)) is not None:
        session["delegation"] = tools
    return session
