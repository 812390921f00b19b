"""The call core's own Realtime vocabulary, free of any dialect's event names.

Dialect modules (``realtime_beta``, ``realtime_ga``) translate these commands into wire
events and wire events into these events. The call core only ever sees this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson


class RealtimeProtocolError(ValueError):
    """A Realtime message we cannot parse; the text says why."""


# --- Session configuration ---


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    # Whether the server answers each turn itself and stops its answer when the caller speaks.
    # A media call turns both off: the bridge pauses on speech and decides (core.barge_in).
    create_response: bool = True
    interrupt_response: bool = True


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class RemoteMcpServer:
    """An MCP server the provider itself calls (GA sessions); the bridge never sees its calls."""

    label: str
    url: str
    allowed_tools: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionConfig:
    instructions: str
    voice: str
    audio_format: str = "pcm16"  # "pcm16" (24 kHz) or "g711_ulaw" (8 kHz)
    turn_detection: TurnDetection = field(default_factory=TurnDetection)
    transcription_model: str | None = None
    tools: tuple[Tool, ...] = ()
    mcp_servers: tuple[RemoteMcpServer, ...] = ()  # only dialects that take them (GA) send these
    # Dialects that name the model in the session rather than the URL (Live) read these.
    model: str = ""
    delegation_model: str = ""  # the model that runs the tools, where the voice model has none


@dataclass(frozen=True)
class Capabilities:
    """What a dialect's protocol lets the core do; beta and GA can do all of it."""

    truncate: bool = True  # the model can be told what was heard; else agent audio is paced
    responses: bool = True  # speech comes in responses with created/done events
    ready_first: bool = False  # nothing but the session config until the session is ready
    late_tools: bool = True  # tools found after the session opened can be added to it


@dataclass(frozen=True)
class TranscriptionConfig:
    model: str
    audio_format: str = "pcm16"
    language: str | None = None
    turn_detection: TurnDetection = field(default_factory=TurnDetection)


# --- Commands: what the core asks of the model ---


@dataclass(frozen=True)
class ConfigureSession:
    config: SessionConfig


@dataclass(frozen=True)
class UpdateTools:
    """The tools of a session already configured (found late: an MCP server slow to list them).
    Only the tools: the voice cannot change once the agent has spoken."""

    config: SessionConfig


@dataclass(frozen=True)
class ConfigureTranscription:
    config: TranscriptionConfig


@dataclass(frozen=True)
class AppendAudio:
    audio: str  # base64, in the session's input format


@dataclass(frozen=True)
class CommitAudio:
    """End the caller's turn now (e.g. the call ended mid-sentence) so it gets transcribed."""


@dataclass(frozen=True)
class CreateResponse:
    instructions: str | None = None


@dataclass(frozen=True)
class CancelResponse:
    response_id: str | None = None


@dataclass(frozen=True)
class TruncateItem:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class DeleteItem:
    """Remove an item from the conversation: an agent item the caller heard none of (the server
    refuses to truncate an item whose audio was never played)."""

    item_id: str


@dataclass(frozen=True)
class AddUserText:
    text: str


@dataclass(frozen=True)
class AddAssistantText:
    """Something the agent said, as text (restoring a conversation in a new session)."""

    text: str


@dataclass(frozen=True)
class AddFunctionOutput:
    call_id: str
    output: str


Command = Union[ConfigureSession, ConfigureTranscription, AppendAudio, CommitAudio, CreateResponse,
                CancelResponse, TruncateItem, DeleteItem, AddUserText, AddAssistantText, AddFunctionOutput]


# --- Events: what the model tells the core ---


@dataclass(frozen=True)
class SessionReady:
    created: bool  # session.created (True) or session.updated (False)


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class TurnCommitted:
    """The caller's turn is in the conversation (``input_audio_buffer.committed``): the bridge
    asks for the answer, since the server no longer does it by itself."""

    item_id: str


@dataclass(frozen=True)
class InputTranscript:
    item_id: str
    transcript: str


@dataclass(frozen=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True)
class OutputItemAdded:
    """A response started an item; for function calls this is where beta names the function."""

    response_id: str
    item_id: str
    type: str
    name: str = ""
    call_id: str = ""


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    item_id: str
    audio: str  # base64, in the session's output format


@dataclass(frozen=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True)
class TranscriptDelta:
    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True)
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True)
class FunctionCall:
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class TimedTranscript:
    """A transcript fragment on the session's timeline, from dialects without items (Live)."""

    speaker: str  # "caller" or "agent"
    delta: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class UsageUpdated:
    """Cumulative usage of the session; ``final`` when the session has closed."""

    usage: dict[str, Any]
    final: bool = False


@dataclass(frozen=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class RealtimeError:
    type: str
    code: str | None
    message: str
    event_id: str | None  # the client event that caused it, when the server says

    @property
    def fatal(self) -> bool:
        """Errors about one client event leave the session usable; these do not."""
        return (self.type in FATAL_ERROR_TYPES or (self.code or "") in FATAL_ERROR_CODES)

    @property
    def retired(self) -> bool:
        """The provider no longer speaks the protocol shape we spoke: no session will ever start."""
        return self.code == RETIRED_SHAPE_CODE

    @property
    def benign(self) -> bool:
        """Expected races: our cancel after the server's own VAD cancel, a commit of nothing."""
        return (self.code or "") in BENIGN_ERROR_CODES


FATAL_ERROR_TYPES = frozenset({"server_error", "authentication_error", "permission_error"})
# api.openai.com answers a beta-shaped session (header ``OpenAI-Beta: realtime=v1``) so since
# May 2026, then closes with FINAL_CLOSE_CODE (PROTOCOLS.md, "Realtime beta shutdown").
RETIRED_SHAPE_CODE = "beta_api_shape_disabled"
# A close for a refused request: reconnecting gets the same answer.
FINAL_CLOSE_CODE = 4000
# What to change when the provider retired the beta shape (OpenAI and Azure speak GA).
RETIRED_SHAPE_FIX = ("the provider has retired the Realtime beta protocol (beta_api_shape_disabled): "
                     "set REALTIME_DIALECT=ga (OpenAI, Azure) and restart")
FATAL_ERROR_CODES = frozenset({"session_expired", "invalid_api_key", "insufficient_quota", RETIRED_SHAPE_CODE})
BENIGN_ERROR_CODES = frozenset({"response_cancel_not_active", "input_audio_buffer_commit_empty"})


@dataclass(frozen=True)
class Ignored:
    """A known event the bridge does not act on (rate limits, item lifecycle…)."""

    type: str


@dataclass(frozen=True)
class Unknown:
    """An event type the dialect does not know; logged once per type."""

    type: str


Event = Union[SessionReady, SpeechStarted, SpeechStopped, TurnCommitted, InputTranscript, ResponseCreated,
              OutputItemAdded, AudioDelta, AudioDone, TranscriptDelta, TranscriptDone, FunctionCall, ResponseDone,
              ItemTruncated, TimedTranscript, UsageUpdated, RealtimeError, Ignored, Unknown]


class Dialect(Protocol):
    """One wire protocol: ``encode`` commands, ``decode`` server text, ``url`` to connect to."""

    name: str
    headers: dict[str, str]
    capabilities: Capabilities

    def url(self, base: str, model: str, intent: str | None = None) -> str: ...

    def encode(self, command: Command) -> dict[str, Any]: ...

    def decode(self, text: str | bytes) -> Event: ...


def model_in_query(base: str, model: str, intent: str | None = None) -> str:
    """The Realtime URL: ``model=`` (or ``intent=transcription``) added to the base URL's query."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("model", "intent")]
    query.append(("intent", intent) if intent else ("model", model))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


# --- Decoding shared by the dialects: each names its wire events, the fields are the same. ---


def str_at(msg: dict, key: str) -> str:
    """``msg[key]`` when it is a string, else "" (a missing or mistyped field never raises)."""
    value = msg.get(key)
    return value if isinstance(value, str) else ""


def int_at(msg: dict, key: str) -> int:
    """``msg[key]`` as a whole number when it is a number, else 0."""
    value = msg.get(key)
    return int(value) if isinstance(value, (int, float)) else 0


def obj_at(msg: dict, key: str) -> dict:
    """``msg[key]`` when it is an object, else {} (so a number or a list there never raises)."""
    value = msg.get(key)
    return value if isinstance(value, dict) else {}


def _usage(response: dict) -> dict | None:
    usage = response.get("usage")
    return usage if isinstance(usage, dict) else None


def _decode_error(msg: dict) -> RealtimeError:
    err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
    return RealtimeError(type=str_at(err, "type") or "error", code=str_at(err, "code") or None,
                         message=str_at(err, "message"), event_id=str_at(err, "event_id") or None)


_BUILDERS = {
    "session.created": lambda m: SessionReady(True),
    "session.updated": lambda m: SessionReady(False),
    "transcription_session.updated": lambda m: SessionReady(False),
    "input_audio_buffer.speech_started": lambda m: SpeechStarted(str_at(m, "item_id"), int_at(m, "audio_start_ms")),
    "input_audio_buffer.speech_stopped": lambda m: SpeechStopped(str_at(m, "item_id"), int_at(m, "audio_end_ms")),
    "input_audio_buffer.committed": lambda m: TurnCommitted(str_at(m, "item_id")),
    "conversation.item.input_audio_transcription.completed":
        lambda m: InputTranscript(str_at(m, "item_id"), str_at(m, "transcript")),
    "response.created": lambda m: ResponseCreated(str_at(obj_at(m, "response"), "id")),
    "audio.delta": lambda m: AudioDelta(str_at(m, "response_id"), str_at(m, "item_id"), str_at(m, "delta")),
    "audio.done": lambda m: AudioDone(str_at(m, "response_id"), str_at(m, "item_id")),
    "transcript.delta": lambda m: TranscriptDelta(str_at(m, "response_id"), str_at(m, "item_id"), str_at(m, "delta")),
    "transcript.done":
        lambda m: TranscriptDone(str_at(m, "response_id"), str_at(m, "item_id"), str_at(m, "transcript")),
    "response.function_call_arguments.done": lambda m: FunctionCall(
        str_at(m, "response_id"), str_at(m, "item_id"), str_at(m, "call_id"), str_at(m, "name"),
        str_at(m, "arguments")),
    "response.done": lambda m: ResponseDone(
        str_at(obj_at(m, "response"), "id"), str_at(obj_at(m, "response"), "status") or "completed",
        _usage(obj_at(m, "response"))),
    "conversation.item.truncated": lambda m: ItemTruncated(str_at(m, "item_id"), int_at(m, "audio_end_ms")),
    "response.output_item.added": lambda m: OutputItemAdded(
        str_at(m, "response_id"), str_at(obj_at(m, "item"), "id"), str_at(obj_at(m, "item"), "type"),
        str_at(obj_at(m, "item"), "name"), str_at(obj_at(m, "item"), "call_id")),
    "error": _decode_error,
}

# Events both dialects send that the bridge does not act on.
COMMON_IGNORED = frozenset({
    "input_audio_buffer.cleared", "conversation.created",
    "conversation.item.created", "conversation.item.deleted",
    "response.output_item.done", "response.content_part.added", "response.content_part.done",
    "response.function_call_arguments.delta", "rate_limits.updated",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.input_audio_transcription.segment",
})


def decode_with(text: str | bytes, renames: dict[str, str], ignored: frozenset[str]) -> Event:
    """Parses one server message; ``renames`` maps a dialect's own names to the shared ones."""
    try:
        msg = orjson.loads(text)  # 3-4x json.loads on these messages, measured
    except ValueError as exc:
        raise RealtimeProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise RealtimeProtocolError("message without a 'type'")
    kind = msg["type"]
    builder = _BUILDERS.get(renames.get(kind, kind))
    if builder is not None:
        return builder(msg)
    if kind in ignored or kind in COMMON_IGNORED:
        return Ignored(kind)
    return Unknown(kind)


# --- Encoding shared by the dialects ---

_escape = json.encoder.encode_basestring_ascii  # the C string escaper json.dumps itself uses


def append_audio_text(encode: Callable[[Command], dict[str, Any]], command: Command,
                      append_type: str = "input_audio_buffer.append") -> str:
    """A command as wire text, with the audio append (named ``append_type``) written directly.

    The append goes out 50 times a second per call, so it skips building and walking a dict
    (3x cheaper). Its payload is still escaped: in passthrough it is whatever Twilio sent.
    """
    if isinstance(command, AppendAudio):
        return '{"type":"%s","audio":%s}' % (append_type, _escape(command.audio))
    return json.dumps(encode(command))
