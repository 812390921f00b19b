"""The GA Realtime dialect, spoken by OpenAI (`gpt-realtime`) and Azure OpenAI.

No ``OpenAI-Beta`` header; ``session.update`` carries ``session.type`` and nests audio
settings under ``audio.input``/``audio.output``; audio formats are objects
(``{"type": "audio/pcm", "rate": 24000}``, ``{"type": "audio/pcmu"}``); output events are
``response.output_audio.*``; a transcription session is a ``session.update`` whose
``session.type`` is ``"transcription"``.
"""

from __future__ import annotations

from typing import Any

from telephony.wire import realtime as rt
from telephony.wire.realtime_beta import (
    add_tools,
    agent_turns,
    server_vad,
    transcription,
)
from telephony.wire.realtime_beta import encode as _encode_beta

name = "ga"
headers: dict[str, str] = {}
capabilities = rt.Capabilities()
url = rt.model_in_query

_RENAMES = {
    "response.output_audio.delta": "audio.delta",
    "response.output_audio.done": "audio.done",
    "response.output_audio_transcript.delta": "transcript.delta",
    "response.output_audio_transcript.done": "transcript.done",
}
_IGNORED = frozenset({
    "response.output_text.delta", "response.output_text.done", "conversation.item.added",
    "conversation.item.done", "input_audio_buffer.timeout_triggered",
    "input_audio_buffer.dtmf_event_received", "output_audio_buffer.started",
    "output_audio_buffer.stopped", "output_audio_buffer.cleared",
})

_FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24000}, "g711_ulaw": {"type": "audio/pcmu"}}


def _audio_format(name_: str) -> dict[str, Any]:
    try:
        return dict(_FORMATS[name_])
    except KeyError:
        raise ValueError(f"GA dialect has no audio format {name_!r}") from None


def _session(config: rt.SessionConfig) -> dict[str, Any]:
    audio_input: dict[str, Any] = {"format": _audio_format(config.audio_format),
                                   "turn_detection": agent_turns(config.turn_detection)}
    if config.transcription_model:
        audio_input["transcription"] = transcription(config.transcription_model)
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": config.instructions,
        "audio": {"input": audio_input,
                  "output": {"format": _audio_format(config.audio_format), "voice": config.voice}},
    }
    return _add_mcp_servers(add_tools(session, config.tools), config.mcp_servers)


def _add_mcp_servers(session: dict[str, Any], servers: tuple[rt.RemoteMcpServer, ...]) -> dict[str, Any]:
    """Remote MCP servers the provider calls itself: GA's ``tools`` entries of type ``mcp``."""
    if servers:
        session.setdefault("tools", []).extend(_mcp_tool(s) for s in servers)
        session["tool_choice"] = "auto"
    return session


def _mcp_tool(server: rt.RemoteMcpServer) -> dict[str, Any]:
    tool: dict[str, Any] = {"type": "mcp", "server_label": server.label, "server_url": server.url,
                            "require_approval": "never"}  # nobody is there to approve mid-call
    if server.allowed_tools:
        tool["allowed_tools"] = list(server.allowed_tools)
    if server.headers:
        tool["headers"] = dict(server.headers)
    return tool


def _transcription_session(cfg: rt.TranscriptionConfig) -> dict[str, Any]:
    return {"type": "transcription", "audio": {"input": {
        "format": _audio_format(cfg.audio_format), "transcription": transcription(cfg.model, cfg.language),
        "turn_detection": server_vad(cfg.turn_detection)}}}


def tools_session(config: rt.SessionConfig) -> dict[str, Any]:
    """A session that says only its tools: what a later session.update changes."""
    session = _session(config)
    return {"type": "realtime", **{k: session[k] for k in ("tools", "tool_choice") if k in session}}


def encode(command: rt.Command) -> dict[str, Any]:
    if isinstance(command, rt.ConfigureSession):
        return {"type": "session.update", "session": _session(command.config)}
    if isinstance(command, rt.UpdateTools):
        return {"type": "session.update", "session": tools_session(command.config)}
    if isinstance(command, rt.ConfigureTranscription):
        return {"type": "session.update", "session": _transcription_session(command.config)}
    if isinstance(command, rt.AddAssistantText):  # restoring the conversation after a reconnect
        return {"type": "conversation.item.create", "item": {
            "type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": command.text}]}}
    # Appending audio, truncating, cancelling, creating responses and other items are the same on
    # the wire in both dialects.
    return _encode_beta(command)


def serialize(command: rt.Command) -> str:
    return rt.append_audio_text(encode, command)


def decode(text: str | bytes) -> rt.Event:
    return rt.decode_with(text, _RENAMES, _IGNORED)
