"""The Live dialect (GPT-Live, ``openai.types.live``): a protocol of its own, not Realtime.

``session.start`` names the model, instructions, one audio format for both directions and the
voice; nothing else may be sent until ``session.started``. Audio is a continuous stream both
ways without items, responses, VAD events, truncate or cancel: the server decides interruptions
itself. Transcripts are fragments on the session's timeline (``start_ms``/``end_ms``). Tools run
in a delegated Responses backend: its function calls arrive nested in ``response.event`` and are
answered with ``response.item.create`` + ``response.create``. Protocol notes: docs/PROTOCOLS-live.md.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from telephony.wire import realtime as rt
from telephony.wire.realtime import int_at, str_at

name = "live"
headers: dict[str, str] = {}
capabilities = rt.Capabilities(truncate=False, responses=False, ready_first=True, late_tools=False)

PATH = "/v1/live/sessions"
_FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24000}, "g711_ulaw": {"type": "audio/pcmu", "rate": 8000}}
_SPEAKERS = {"session.input_transcript.delta": "caller", "session.output_transcript.delta": "agent"}
# Acknowledgements and notices the bridge does not act on (the sideband's reflected input too).
_IGNORED = frozenset({
    "session.updated", "session.input_audio.muted", "session.input_audio.unmuted",
    "session.instructions.appended", "session.commentary.appended", "session.thinking.appended",
    "session.delegation.created", "session.input_audio.append", "info",
})


def url(base: str, model: str, intent: str | None = None) -> str:
    """``/v1/live/sessions`` on the configured host, with no query: the model goes in session.start."""
    parts = urlsplit(base)
    path = parts.path if parts.path.rstrip("/").endswith("/live/sessions") else PATH
    return urlunsplit(parts._replace(path=path, query="", fragment=""))


def _audio_format(name_: str) -> dict[str, Any]:
    try:
        return dict(_FORMATS[name_])
    except KeyError:
        raise ValueError(f"Live dialect has no audio format {name_!r}") from None


def _session(config: rt.SessionConfig) -> dict[str, Any]:
    session: dict[str, Any] = {
        "model": config.model,
        "instructions": config.instructions,
        "audio": {"format": _audio_format(config.audio_format), "output": {"voice": config.voice}},
    }
    if config.tools:  # the voice model has no tools: a Responses backend runs them for it
        session["delegation"] = {"type": "responses", "responses": {
            "model": config.delegation_model, "instructions": config.instructions,
            "tools": [{"type": "function", "name": t.name, "description": t.description,
                       "parameters": t.parameters} for t in config.tools],
            "tool_choice": "auto"}}
    return session


def _context(kind: str, content: str) -> dict[str, Any]:
    return {"type": kind, "content": content, "delegation_id": None}


def encode(command: rt.Command) -> dict[str, Any]:
    if isinstance(command, rt.AppendAudio):
        return {"type": "session.input_audio.append", "audio": command.audio}
    if isinstance(command, rt.ConfigureSession):
        return {"type": "session.start", "session": _session(command.config)}
    if isinstance(command, rt.CreateResponse):
        if command.instructions is None:  # continue the delegated response after a tool result
            return {"type": "response.create"}
        # Speech cannot be requested directly: a commentary worded as an instruction (the greeting).
        return _context("session.commentary.append", command.instructions)
    if isinstance(command, rt.AddUserText):  # keypad digits, a restored conversation
        return _context("session.instructions.append", command.text)
    if isinstance(command, rt.AddAssistantText):
        return _context("session.instructions.append", f"Earlier in this call you said: {command.text}")
    if isinstance(command, rt.AddFunctionOutput):
        return {"type": "response.item.create", "item": {
            "type": "function_call_output", "call_id": command.call_id, "output": command.output}}
    # Truncate, cancel and commit have no counterpart: the core never asks them of Live.
    raise ValueError(f"the Live dialect has no counterpart for {type(command).__name__}")


def serialize(command: rt.Command) -> str:
    return rt.append_audio_text(encode, command, "session.input_audio.append")


def decode(text: str | bytes) -> rt.Event:
    try:
        msg = orjson.loads(text)
    except ValueError as exc:
        raise rt.RealtimeProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise rt.RealtimeProtocolError("message without a 'type'")
    kind = msg["type"]
    if kind == "session.output_audio.delta":  # no item or response ids in Live
        return rt.AudioDelta("", "", str_at(msg, "delta"))
    if kind in _SPEAKERS:
        return rt.TimedTranscript(_SPEAKERS[kind], str_at(msg, "delta"), int_at(msg, "start_ms"),
                                  int_at(msg, "end_ms"))
    if kind == "session.started":
        return rt.SessionReady(True)
    if kind == "response.event":
        return _nested(msg)
    if kind in ("session.usage.updated", "session.closed"):
        usage = msg.get("usage") if isinstance(msg.get("usage"), dict) else {}
        if kind == "session.closed":
            usage = {**usage, "reason": str_at(msg, "reason")}
        return rt.UsageUpdated(usage, final=kind == "session.closed")
    if kind == "error":
        err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
        return rt.RealtimeError(type=str_at(err, "type") or "error", code=str_at(err, "code") or None,
                                message=str_at(err, "message"), event_id=str_at(err, "client_event_id") or None)
    if kind in _IGNORED:
        return rt.Ignored(kind)
    return rt.Unknown(kind)


def _nested(msg: dict[str, Any]) -> rt.Event:
    """A delegated Responses event: a finished function call is the core's FunctionCall."""
    event = msg.get("event") if isinstance(msg.get("event"), dict) else {}
    item = event.get("item") if isinstance(event.get("item"), dict) else {}
    if event.get("type") == "response.output_item.done" and item.get("type") == "function_call":
        return rt.FunctionCall(str_at(event, "response_id"), str_at(item, "id"), str_at(item, "call_id"),
                               str_at(item, "name"), str_at(item, "arguments"))
    return rt.Ignored(f"response.event/{str_at(event, 'type') or '?'}")
