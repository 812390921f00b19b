"""OpenAI's SIP route (Realtime calls): the webhook's SIP headers, the accept body, the sideband.

OpenAI answers the SIP call itself and plays the audio; we steer it over REST
(``/v1/realtime/calls/{call_id}/accept|reject|refer|hangup``) and a sideband websocket
(``/v1/realtime?call_id=…``), an ordinary GA Realtime connection without audio deltas. This
module is the sideband's dialect: GA's commands and events, plus the events only SIP (and
WebRTC) sessions send: the caller's keypad and when the agent's audio starts and stops playing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from telephony.wire import realtime as rt
from telephony.wire import realtime_ga

OPENAI_SIP_PATH = "/openai/sip"  # where OpenAI's webhooks reach us
DEFAULT_BASE_URL = "https://api.openai.com/v1"
INCOMING = "realtime.call.incoming"
BUSY_HERE = 486  # SIP status for a call we cannot take now
NOT_FOUND = 404  # SIP status for a number no profile answers

name = "openai_sip"
headers: dict[str, str] = {}


# --- Events only a SIP sideband sends ---


@dataclass(frozen=True)
class AgentAudioStarted:
    """The caller started hearing a response (``output_audio_buffer.started``)."""

    response_id: str


@dataclass(frozen=True)
class AgentAudioStopped:
    """The caller heard the last of it (``stopped``), or it was cut off (``cleared``)."""

    response_id: str
    cleared: bool = False


@dataclass(frozen=True)
class KeypadDigit:
    """A DTMF key the caller pressed (``input_audio_buffer.dtmf_event_received``)."""

    digit: str


SidebandEvent = AgentAudioStarted | AgentAudioStopped | KeypadDigit


def decode(text: str | bytes) -> rt.Event | SidebandEvent:
    try:
        msg = orjson.loads(text)
    except ValueError as exc:
        raise rt.RealtimeProtocolError(f"not JSON: {exc}") from None
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "output_audio_buffer.started":
        return AgentAudioStarted(str(msg.get("response_id") or ""))
    if kind in ("output_audio_buffer.stopped", "output_audio_buffer.cleared"):
        return AgentAudioStopped(str(msg.get("response_id") or ""), cleared=kind.endswith("cleared"))
    if kind == "input_audio_buffer.dtmf_event_received":
        return KeypadDigit(str(msg.get("event") or ""))
    return realtime_ga.decode(text)


def encode(command: rt.Command) -> dict[str, Any]:
    if isinstance(command, (rt.ConfigureSession, rt.UpdateTools)):
        return {"type": "session.update", "session": tools_update(command.config)}
    return realtime_ga.encode(command)


def serialize(command: rt.Command) -> str:
    return rt.append_audio_text(encode, command)


# --- REST and websocket addresses ---


WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def unverifiable_header(headers: Mapping[str, str]) -> str | None:
    """The standard-webhooks header that is not printable ASCII, if any: the SDK's verifier
    compares it with ``hmac.compare_digest``, which raises TypeError on non-ASCII text."""
    for key in WEBHOOK_HEADERS:
        value = headers.get(key)
        if value is not None and not (value.isascii() and value.isprintable()):
            return key
    return None


def sideband_url(base_url: str, call_id: str) -> str:
    """``https://api.openai.com/v1`` → ``wss://api.openai.com/v1/realtime?call_id=…``, as the
    openai package derives its websocket URL from its base URL."""
    parts = urlsplit(base_url)
    scheme = "ws" if parts.scheme == "http" else "wss"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/realtime",
                       urlencode({"call_id": call_id}), ""))


# --- The accept body ---


def tools_update(config: rt.SessionConfig) -> dict[str, Any]:
    """What a ``session.update`` on the sideband changes: the tools (found after the accept, on an
    MCP server). The rest was set by the accept, and the voice cannot change once the agent spoke."""
    return realtime_ga.tools_session(config)


def accept_session(config: rt.SessionConfig, model: str) -> dict[str, Any]:
    """The session for ``/accept``: GA's ``session.update`` body with the model, and without audio
    formats (the SIP side negotiates its codec in SDP)."""
    session = realtime_ga.encode(rt.ConfigureSession(config))["session"]
    audio = session.get("audio", {})
    for side in ("input", "output"):
        audio.get(side, {}).pop("format", None)
    return {**session, "model": model}


# --- SIP headers of the INVITE (untrusted) ---

_ADDRESS = re.compile(r"<([^>]*)>")


def header(sip_headers: Iterable[Mapping[str, str]], wanted: str) -> str:
    """The first value of header ``wanted`` (case-insensitive over ASCII only: no Unicode folding), or ""."""
    for h in sip_headers:
        name = str(h.get("name", ""))
        if name.isascii() and name.lower() == wanted.lower():
            return str(h.get("value", ""))
    return ""


def address(value: str) -> str:
    """The URI of a From/To header value: ``"Ann" <sip:+1555@x>;tag=1`` → ``sip:+1555@x``."""
    found = _ADDRESS.search(value)
    return (found.group(1) if found else value.split(";", 1)[0]).strip()
