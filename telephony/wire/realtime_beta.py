"""The beta Realtime dialect (``OpenAI-Beta: realtime=v1``), spoken by OPE.AI.

Flat ``session.update``, ``response.audio.delta``; transcription sessions are configured
with ``transcription_session.update``.
"""

from __future__ import annotations

from typing import Any

from telephony.wire import realtime as rt

name = "beta"
headers = {"OpenAI-Beta": "realtime=v1"}
capabilities = rt.Capabilities()
url = rt.model_in_query

_RENAMES = {
    "response.audio.delta": "audio.delta",
    "response.audio.done": "audio.done",
    "response.audio_transcript.delta": "transcript.delta",
    "response.audio_transcript.done": "transcript.done",
}
_IGNORED = frozenset({"response.text.delta", "response.text.done", "transcription_session.created"})


def server_vad(td: rt.TurnDetection) -> dict[str, Any]:
    return {"type": "server_vad", "threshold": td.threshold,
            "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms}


def agent_turns(td: rt.TurnDetection) -> dict[str, Any]:
    """Server VAD for an agent session; whether the server answers each turn and stops its answer
    when the caller speaks is the session's choice (a media call's bridge does both itself)."""
    return {**server_vad(td), "create_response": td.create_response,
            "interrupt_response": td.interrupt_response}


def transcription(model: str, language: str | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = {"model": model}
    if language:
        settings["language"] = language
    return settings


def add_tools(session: dict[str, Any], tools: tuple[rt.Tool, ...]) -> dict[str, Any]:
    """Function tools are declared alike in both dialects' sessions."""
    if tools:
        session["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                             "parameters": t.parameters} for t in tools]
        session["tool_choice"] = "auto"
    return session


def _session(config: rt.SessionConfig) -> dict[str, Any]:
    session: dict[str, Any] = {
        "modalities": ["audio", "text"],
        "instructions": config.instructions,
        "voice": config.voice,
        "input_audio_format": config.audio_format,
        "output_audio_format": config.audio_format,
        "turn_detection": agent_turns(config.turn_detection),
    }
    if config.transcription_model:
        session["input_audio_transcription"] = transcription(config.transcription_model)
    return add_tools(session, config.tools)


def encode(command: rt.Command) -> dict[str, Any]:
    if isinstance(command, rt.AppendAudio):
        return {"type": "input_audio_buffer.append", "audio": command.audio}
    if isinstance(command, rt.ConfigureSession):
        return {"type": "session.update", "session": _session(command.config)}
    if isinstance(command, rt.UpdateTools):
        session = _session(command.config)
        return {"type": "session.update", "session": {k: session[k] for k in ("tools", "tool_choice")
                                                      if k in session}}
    if isinstance(command, rt.CommitAudio):
        return {"type": "input_audio_buffer.commit"}
    if isinstance(command, rt.TruncateItem):
        return {"type": "conversation.item.truncate", "item_id": command.item_id,
                "content_index": 0, "audio_end_ms": command.audio_end_ms}
    if isinstance(command, rt.DeleteItem):
        return {"type": "conversation.item.delete", "item_id": command.item_id}
    if isinstance(command, rt.CancelResponse):
        event: dict[str, Any] = {"type": "response.cancel"}
        if command.response_id:
            event["response_id"] = command.response_id
        return event
    if isinstance(command, rt.CreateResponse):
        if command.instructions is None:
            return {"type": "response.create"}
        return {"type": "response.create", "response": {"instructions": command.instructions}}
    if isinstance(command, rt.AddUserText):
        return {"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": command.text}]}}
    if isinstance(command, rt.AddAssistantText):
        # Beta assistant messages carry "text" parts; "input_text" is for user messages.
        return {"type": "conversation.item.create", "item": {
            "type": "message", "role": "assistant",
            "content": [{"type": "text", "text": command.text}]}}
    if isinstance(command, rt.AddFunctionOutput):
        return {"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": command.call_id, "output": command.output}}
    if isinstance(command, rt.ConfigureTranscription):
        cfg = command.config
        return {"type": "transcription_session.update", "session": {
            "input_audio_format": cfg.audio_format,
            "input_audio_transcription": transcription(cfg.model, cfg.language),
            "turn_detection": server_vad(cfg.turn_detection)}}
    raise TypeError(f"beta dialect cannot encode {command!r}")


def serialize(command: rt.Command) -> str:
    return rt.append_audio_text(encode, command)


def decode(text: str | bytes) -> rt.Event:
    return rt.decode_with(text, _RENAMES, _IGNORED)
