"""A local Realtime engine: the server side of the Realtime protocol (beta and GA) and of Live, offline.

Sans-I/O like the call core: ``RealtimeEngine`` is fed client events (text) and clock readings
and returns the server events (dicts) to send; it owns no socket, task or clock. The shells in
``local_realtime`` carry the events (an in-process transport for ``REALTIME_URL=local`` and a
websocket server for ``telephony realtime-server``).

What it does, as the real service does for the events the bridge uses: ``session.created`` /
``session.updated``; an energy VAD with hysteresis over the appended audio (``speech_started``
with ``audio_start_ms`` and ``item_id``, ``speech_stopped``, ``committed``, the user item,
and its transcript when transcription is on, from the persona's recogniser: a slow one runs in
the shell, off the event loop, see ``TranscriptionJob``); an automatic response to each caller
turn unless ``turn_detection.create_response`` is false; ``response.create`` (a greeting);
audio streamed in chunks faster than real time with its transcript; ``response.cancel`` and
``interrupt_response`` (speech cancels the response in progress unless it is false; a cancelled
response produces no more audio, optionally after a few deltas "in flight");
``conversation.item.truncate`` checked against the audio the item really has, and refused at
0 ms as the real service refuses it; ``conversation.item.delete``. A ``Persona`` decides what is
said and how it sounds.

In the Live dialect (``openai.types.live``) the same engine answers ``session.start`` with
``session.started``, streams ``session.output_audio.delta`` and timed transcripts, sends no VAD,
response or item events, and interrupts itself ``LIVE_INTERRUPT_MS`` into caller speech (the
only sign of it is the caller's transcript fragment, as from the real server); function calls
arrive nested in ``response.event``.

Known simplifications: ``audio_start_ms`` is the first loud 20 ms frame (the real service
moves it back by ``prefix_padding_ms``); the VAD's threshold is RMS, not the session's 0–1
``threshold``; no text-only responses and no language model (a persona decides what is said,
and may end an utterance with a function call).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import soxr

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

from telephony.offline.recognizer import PlaceholderRecognizer, Recognizer
from telephony.offline.voices import RATE as VOICE_RATE
from telephony.offline.voices import Voice

BETA_NAMES = {"audio.delta": "response.audio.delta", "audio.done": "response.audio.done",
              "transcript.delta": "response.audio_transcript.delta",
              "transcript.done": "response.audio_transcript.done"}
GA_NAMES = {"audio.delta": "response.output_audio.delta", "audio.done": "response.output_audio.done",
            "transcript.delta": "response.output_audio_transcript.delta",
            "transcript.done": "response.output_audio_transcript.done"}

RATES = {"pcm16": 24000, "g711_ulaw": 8000, "g711_alaw": 8000}
GA_FORMATS = {"pcm16": {"type": "audio/pcm", "rate": 24000}, "g711_ulaw": {"type": "audio/pcmu"},
              "g711_alaw": {"type": "audio/pcma"}}
_FROM_GA = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


def _flatten_ga_session(update: dict[str, Any]) -> dict[str, Any]:
    """A GA ``session.update`` (nested ``audio.input/output``) in the engine's flat terms."""
    flat = {k: update[k] for k in ("instructions", "tools", "tool_choice") if k in update}
    audio = update.get("audio") or {}
    for side, key in (("input", "input_audio_format"), ("output", "output_audio_format")):
        fmt = (audio.get(side) or {}).get("format")
        if fmt is not None:
            if not isinstance(fmt, dict) or fmt.get("type") not in _FROM_GA:
                raise ValueError(f"Invalid audio.{side}.format: {fmt!r}")
            flat[key] = _FROM_GA[fmt["type"]]
    audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
    if "turn_detection" in audio_in:
        flat["turn_detection"] = audio_in["turn_detection"]
    if "transcription" in audio_in:
        flat["input_audio_transcription"] = audio_in["transcription"]
    if "voice" in audio_out:
        flat["voice"] = audio_out["voice"]
    return flat


_TURN_FLAGS = ("create_response", "interrupt_response")


def _turn_detection_problem(td: Any) -> str | None:
    """What the real service would refuse in a ``turn_detection`` (beta or GA: same keys), or None."""
    if td is None:
        return None
    if not isinstance(td, dict):
        return f"Invalid turn_detection: expected an object or null, got {td!r}"
    if td.get("type", "server_vad") not in ("server_vad", "semantic_vad"):
        return f"Invalid value: '{td.get('type')}'. Supported values are: 'server_vad' and 'semantic_vad'."
    for key in _TURN_FLAGS:
        if key in td and td[key] is not None and not isinstance(td[key], bool):
            return f"Invalid type for 'turn_detection.{key}': expected a boolean, got {td[key]!r}"
    return None


def _item_kind(item: dict[str, Any]) -> str:
    """What a truncate may do to it: only an assistant's audio message can be truncated."""
    if item.get("type") == "message" and item.get("role") == "assistant":
        return "assistant_audio"
    return str(item.get("role") or item.get("type") or "other")


VAD_FRAME_MS = 20
LIVE_INTERRUPT_MS = 200  # Live stops its own output this far into caller speech
_FROM_LIVE = {("audio/pcmu", 8000): "g711_ulaw", ("audio/pcm", 24000): "pcm16"}
MAX_TURN_S = 30  # caller audio kept for a persona that wants it (echo), per turn


@dataclass(frozen=True)
class TranscriptionJob:
    """A caller turn for a recogniser too slow to run inside ``receive`` (the persona says so with
    ``transcribes_off_loop``). The shell runs ``engine.transcribe(job)`` off its event loop and
    hands the words to ``engine.transcribed``: the transcript event then follows the commit by
    the recogniser's time, as on the real service."""

    item_id: str | None  # None in Live, which has no items
    audio: bytes  # PCM16 mono at ``rate``
    rate: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Utterance:
    text: str
    pcm: bytes  # PCM16 mono at 24 kHz
    tool_call: tuple[str, str] | None = None  # (function name, JSON arguments) after the audio


class Persona(Protocol):
    """What the agent says. ``n`` counts responses in the session from 0; ``caller_turn`` is the
    caller's turn being answered (PCM16 at the input rate; ``b""`` after a text item or on a
    ``response.create``), or None while the caller has said nothing yet."""

    def utterance(self, n: int, instructions: str | None, caller_turn: bytes | None) -> Utterance: ...

    def transcribe(self, turn: bytes, rate: int) -> str | None: ...


_SAY_EXACTLY = re.compile(r"saying exactly this[^:]*:\s*(.+)$", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class ToolCue:
    """Tells a persona to call a tool: in response ``response`` (0 is usually the greeting, 1 the
    answer to the caller's first turn), it says ``line`` and calls ``name`` with ``arguments``."""

    response: int
    name: str
    arguments: str  # JSON
    line: str = "One moment, let me look that up."


class SpeakingPersona:
    """Greets (the words a ``response.create`` asks for, or a default) and answers each turn;
    with a ``ToolCue``, calls a tool on the cue and then reads out what the tool answered."""

    greeting = "Hello! This is the local test agent. How can I help you today?"
    replies = (
        "Thanks, I heard you. I am the offline test agent, so I cannot really help, "
        "but the call is working.",
        "Sorry, I am only a local test voice. Could you say that once more?",
        "Understood. That is all this offline agent can say, but it is listening.",
    )

    def __init__(self, voice: Voice, tool_cue: ToolCue | None = None, recognizer: Recognizer | None = None) -> None:
        """``recognizer``: transcribes caller turns (None: a placeholder that only gives their length)."""
        self.voice = voice
        self.tool_cue = tool_cue
        self.recognizer = recognizer or PlaceholderRecognizer()

    @property
    def transcribes_off_loop(self) -> bool:
        return self.recognizer.slow

    def text_for(self, n: int, instructions: str | None, caller_turn: bytes | None) -> str:
        said = _SAY_EXACTLY.search(instructions or "")
        if said:
            return said.group(1).strip()
        if caller_turn is None:
            return self.greeting
        return self.replies[max(0, n - 1) % len(self.replies)]  # response 0 is usually the greeting

    def utterance(self, n: int, instructions: str | None, caller_turn: bytes | None) -> Utterance:
        cue = self.tool_cue
        if cue is not None and n == cue.response:
            return Utterance(cue.line, self.voice.speak(cue.line), (cue.name, cue.arguments))
        text = self.text_for(n, instructions, caller_turn)
        return Utterance(text, self.voice.speak(text))

    def after_tool(self, output: str) -> Utterance:
        """The response that follows a tool's output: what it answered, read out."""
        try:
            data = json.loads(output)
        except ValueError:
            data = output
        if isinstance(data, dict) and "error" in data:
            text = "Sorry, I could not look that up just now."
        elif isinstance(data, dict):
            text = "Here is what I found: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data.items()) + "."
        else:
            text = f"Here is what I found: {data}."
        return Utterance(text, self.voice.speak(text))

    def transcribe(self, turn: bytes, rate: int) -> str:
        return self.recognizer.transcribe(turn, rate)

    def warm(self, greeting: str = "") -> None:
        """Synthesises the fixed lines ahead of time so no call waits for them."""
        for text in (greeting or self.greeting, self.greeting, *self.replies):
            self.voice.speak(text)
        warm = getattr(self.recognizer, "warm", None)
        if warm is not None:
            warm()  # a recogniser that loads a model: before the first turn, not during it


@dataclass(frozen=True)
class EngineConfig:
    chunk_ms: int = 100  # audio per delta
    speed: float = 2.0  # deltas are produced this much faster than real time
    vad_start_rms: float = 500.0  # PCM16 RMS of a 20 ms frame that starts speech
    vad_stop_rms: float = 250.0  # below this, a frame counts as quiet (hysteresis)
    silence_ms: int | None = None  # quiet that ends a turn; None: the session's silence_duration_ms
    deltas_after_cancel: int = 0  # deltas still sent after a cancel, as if already in flight
    interrupt: bool | None = None  # None: the session's turn_detection.interrupt_response
    respond_to_turns: bool | None = None  # None: the session's turn_detection.create_response
    transcribe_turns: bool | None = None  # None: when the session asks for input transcription
    dialect: str = "beta"  # "beta", "ga" or "live": event names and session shapes
    transcription: bool = False  # an ``intent=transcription`` session: transcripts, never responses
    # The real service refuses to truncate an item at 0 ms (none of it played): the client must
    # delete it instead (livekit/agents #6157). False: accept it, as this engine once did.
    refuse_unplayed_truncate: bool = True
    # Live: a ``session.instructions.append`` makes it speak when it is silent, as the Live guide's
    # SIP greeting recipe relies on ("greet immediately, then listen"). Off on the primary socket,
    # where the bridge greets by commentary and instructions only add context (keypad digits).
    speak_on_instructions: bool = False


@dataclass
class _Response:
    id: str
    item_id: str
    n: int
    text: str
    audio: bytes  # in the session's output format
    chunks: list[bytes]
    started: float
    sent: int = 0  # chunks sent
    cancelled: str | None = None  # reason, once cancelled
    after_cancel: int = 0
    tool_call: tuple[str, str] | None = None
    timeline_ms: float = 0.0  # Live: where on the session timeline the response began

    def due(self, k: int, chunk_ms: float, speed: float) -> float:
        return self.started + k * chunk_ms / speed / 1000


@dataclass
class _Vad:
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    input_ms: float = 0.0
    in_speech: bool = False
    quiet_ms: float = 0.0
    item_id: str | None = None
    turn: bytearray = field(default_factory=bytearray)  # PCM16 of the current turn, input rate
    turn_start_ms: float = 0.0
    interrupt_at_ms: float | None = None  # Live: when it stops talking over the caller


class RealtimeEngine:
    """One session. ``open``, then ``receive`` client events and ``advance`` the clock."""

    def __init__(self, persona: Persona, config: EngineConfig | None = None, session_id: str = "sess_local") -> None:
        self.persona = persona
        self.config = config or EngineConfig()
        self.live = self.config.dialect == "live"
        self.names = GA_NAMES if self.config.dialect == "ga" else BETA_NAMES
        self._assistant_audio = "output_audio" if self.config.dialect == "ga" else "audio"  # content type
        self._ids = itertools.count(1)
        self.session: dict[str, Any] = {
            "id": session_id, "object": "realtime.session", "modalities": ["audio", "text"],
            "instructions": "", "voice": "alloy", "input_audio_format": "pcm16",
            "output_audio_format": "pcm16", "input_audio_transcription": None,
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 500, "create_response": True,
                               "interrupt_response": True},
            "tools": [], "tool_choice": "auto", "temperature": 0.8,
            "max_response_output_tokens": "inf"}
        self._vad = _Vad()
        self._response: _Response | None = None
        self._n_responses = 0
        self._item_audio_ms: dict[str, float] = {}  # assistant item → audio it has
        self._items: dict[str, str] = {}  # conversation item → its kind ("assistant_audio", "user", …)
        self._last_item: str | None = None
        self._jobs: list[TranscriptionJob] = []  # caller turns waiting for a slow recogniser
        self._heard_caller = False  # a caller turn or user item: no more default greetings
        self._tool_output: str | None = None  # a function_call_output not yet answered
        self._live_session: dict[str, Any] = {}  # Live: the session as session.started described it
        # Live: how often it stopped talking over the caller. No event says so; a shell that plays
        # the audio itself (a SIP line) watches this to stop playing what is already queued.
        self.interruptions = 0

    # --- Public surface ---

    def open(self, now: float) -> list[dict[str, Any]]:
        if self.live:
            return []  # Live speaks only once it is sent session.start
        return [self._event("session.created", session=self._session_view())]

    def _session_view(self) -> dict[str, Any]:
        """The session as this dialect describes it."""
        if self.config.dialect != "ga":
            return dict(self.session)
        fmt_in, fmt_out = (GA_FORMATS[self.session[k]] for k in ("input_audio_format", "output_audio_format"))
        audio_in: dict[str, Any] = {"format": fmt_in, "turn_detection": self.session["turn_detection"]}
        if self.session.get("input_audio_transcription"):
            audio_in["transcription"] = self.session["input_audio_transcription"]
        if self.config.transcription:
            return {"type": "transcription", "id": self.session["id"], "audio": {"input": audio_in}}
        return {"type": "realtime", "id": self.session["id"], "object": "realtime.session",
                "instructions": self.session["instructions"], "output_modalities": ["audio"],
                "audio": {"input": audio_in, "output": {"format": fmt_out, "voice": self.session["voice"]}}}

    def receive(self, text: str | bytes, now: float) -> list[dict[str, Any]]:
        """One client message → the server events it causes, in order."""
        try:
            event = json.loads(text)
        except ValueError:
            return [self._error("invalid_request_error", "invalid_json", "The message is not valid JSON.", None)]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [self._error("invalid_request_error", "invalid_event", "The event has no 'type'.", None)]
        handler = (self._LIVE_HANDLERS if self.live else self._HANDLERS).get(event["type"])
        if handler is None:
            return [self._error("invalid_request_error", "invalid_value",
                                f"Invalid value: '{event['type']}'. Unsupported event type.", event)]
        return handler(self, event, now)

    def advance(self, now: float) -> list[dict[str, Any]]:
        """Audio of the response in progress that is due by ``now``."""
        r, out = self._response, []
        while r is not None and r is self._response and r.due(r.sent, self.config.chunk_ms, self.config.speed) <= now:
            if r.cancelled:
                if r.after_cancel >= self.config.deltas_after_cancel:
                    out += self._finish(r)
                    break
                r.after_cancel += 1
            if r.sent == len(r.chunks):
                out += self._finish(r)
                break
            out += self._delta(r)
        return out

    def take_jobs(self) -> list[TranscriptionJob]:
        """Caller turns to transcribe off the event loop (see ``TranscriptionJob``), oldest first."""
        jobs, self._jobs = self._jobs, []
        return jobs

    def transcribe(self, job: TranscriptionJob) -> str | None:
        """The recogniser's words for a job. Touches only the persona: safe in a worker thread."""
        return self.persona.transcribe(job.audio, job.rate)

    def transcribed(self, job: TranscriptionJob, text: str | None, now: float) -> list[dict[str, Any]]:
        """The transcript event for a job the shell has transcribed."""
        return self._transcript_events(job, text)

    def transcription_failed(self, job: TranscriptionJob, message: str, now: float) -> list[dict[str, Any]]:
        if self.live:
            return []  # Live has no failure event: the caller's words are just missing
        return [self._event("conversation.item.input_audio_transcription.failed", item_id=job.item_id,
                            content_index=0, error={"type": "transcription_error", "code": "recognizer_failed",
                                                    "message": message, "param": None})]

    def next_due(self) -> float | None:
        """When ``advance`` next has something to send (None: nothing until a client event)."""
        r = self._response
        return None if r is None else r.due(r.sent, self.config.chunk_ms, self.config.speed)

    # --- Client events ---

    def _on_session_update(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        update = event.get("session") or {}
        if not isinstance(update, dict):
            return [self._error("invalid_request_error", "invalid_value", "session must be an object", event)]
        if self.config.dialect == "ga":
            try:
                update = _flatten_ga_session(update)
            except ValueError as exc:
                return [self._error("invalid_request_error", "invalid_value", str(exc), event)]
        for key in ("input_audio_format", "output_audio_format"):
            if key in update and update[key] not in RATES:
                return [self._error("invalid_request_error", "invalid_value",
                                    f"Invalid value: '{update[key]}' for {key}.", event)]
        problem = _turn_detection_problem(update.get("turn_detection"))
        if problem:
            return [self._error("invalid_request_error", "invalid_value", problem, event)]
        known = {k: v for k, v in update.items() if k in self.session and k not in ("id", "object")}
        if isinstance(known.get("turn_detection"), dict):
            known["turn_detection"] = {**(self.session["turn_detection"] or {}), **known["turn_detection"]}
        self.session.update(known)
        if event["type"] == "transcription_session.update":
            return [self._event("transcription_session.updated", session={
                "client_secret": {"value": "local", "expires_at": 0},
                "input_audio_format": self.session["input_audio_format"],
                "input_audio_transcription": self.session.get("input_audio_transcription"),
                # A transcription session's VAD never answers: no create_response/interrupt_response.
                "turn_detection": {k: v for k, v in (self.session["turn_detection"] or {}).items()
                                   if k not in ("create_response", "interrupt_response")}})]
        return [self._event("session.updated", session=self._session_view())]

    def _on_append(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        try:
            raw = base64.b64decode(event.get("audio") or "", validate=True)
        except (binascii.Error, ValueError):
            return [self._error("invalid_request_error", "invalid_value", "audio is not valid base64", event)]
        fmt = self.session["input_audio_format"]
        pcm = {"g711_ulaw": lambda b: audioop.ulaw2lin(b, 2), "g711_alaw": lambda b: audioop.alaw2lin(b, 2)
               }.get(fmt, lambda b: b[: len(b) // 2 * 2])(raw)
        return self._run_vad(np.frombuffer(pcm, "<i2"), RATES[fmt], now)

    def _on_commit(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        vad = self._vad
        if not vad.turn and not vad.in_speech:
            return [self._error("invalid_request_error", "input_audio_buffer_commit_empty",
                                "Error committing input audio buffer: buffer is empty.", event)]
        return self._end_turn(now, stopped=False)

    def _on_clear(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        vad = self._vad
        vad.in_speech, vad.quiet_ms, vad.item_id, vad.turn = False, 0.0, None, bytearray()
        return [self._event("input_audio_buffer.cleared")]

    def _on_response_create(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        if self._response is not None:
            return [self._error("invalid_request_error", "conversation_already_has_active_response",
                                f"Conversation already has an active response in progress: {self._response.id}.",
                                event)]
        options = event.get("response") if isinstance(event.get("response"), dict) else {}
        return self._start_response(now, options.get("instructions"), b"" if self._heard_caller else None)

    def _on_response_cancel(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        r = self._response
        wanted = event.get("response_id")
        if r is None or r.cancelled or (wanted and wanted != r.id):
            return [self._error("invalid_request_error", "response_cancel_not_active",
                                "Cancellation failed: no active response found", event)]
        return self._cancel(r, "client_cancelled", now)

    def _on_truncate(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        item, end = event.get("item_id"), event.get("audio_end_ms")
        kind = self._items.get(item) if isinstance(item, str) else None
        if kind is None:
            return [self._error("invalid_request_error", "item_not_found",
                                f"Item with item_id not found: {item}", event)]
        has = self._item_audio_ms.get(item)
        if kind != "assistant_audio" or has is None:  # a caller's turn, a text item, a function call
            return [self._unsupported_truncate(event)]
        if not isinstance(end, int) or isinstance(end, bool) or end < 0:
            return [self._error("invalid_request_error", "invalid_value",
                                "audio_end_ms must be a non-negative integer", event)]
        if end == 0 and self.config.refuse_unplayed_truncate:
            # What the real service answers (livekit/agents #6157): an item none of whose audio was
            # played cannot be truncated; the client deletes it (conversation.item.delete) instead.
            return [self._unsupported_truncate(event)]
        if end > has + 1e-6:
            return [self._error("invalid_request_error", "invalid_value",
                                f"Audio content of {has:.0f}ms is already shorter than {end}ms", event)]
        self._item_audio_ms[item] = float(end)
        return [self._event("conversation.item.truncated", item_id=item,
                            content_index=event.get("content_index", 0), audio_end_ms=end)]

    def _unsupported_truncate(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._error("invalid_request_error", "unsupported_content_type",
                           "Only model output audio messages can be truncated", event)

    def _on_item_delete(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        item = event.get("item_id")
        if not isinstance(item, str) or item not in self._items:
            return [self._error("invalid_request_error", "item_not_found",
                                f"Item with item_id not found: {item}", event)]
        del self._items[item]
        self._item_audio_ms.pop(item, None)
        if self._last_item == item:  # the next item follows the one before it
            self._last_item = next(reversed(self._items), None)
        return [self._event("conversation.item.deleted", item_id=item)]

    def _on_item_create(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        item = event.get("item")
        if not isinstance(item, dict):
            return [self._error("invalid_request_error", "invalid_value", "item must be an object", event)]
        item = {"object": "realtime.item", "status": "completed", **item}
        item.setdefault("id", self._id("item"))
        self._heard_caller = self._heard_caller or item.get("role") == "user"
        if item.get("type") == "function_call_output":
            self._tool_output = str(item.get("output", ""))
        return [self._item_created(item)]

    _HANDLERS = {
        "session.update": _on_session_update,
        "transcription_session.update": _on_session_update,
        "input_audio_buffer.append": _on_append,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
        "conversation.item.truncate": _on_truncate,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.create": _on_item_create,
    }

    # --- Live client events ---

    def _on_live_start(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        session = event.get("session") if isinstance(event.get("session"), dict) else {}
        audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
        fmt = audio.get("format") if isinstance(audio.get("format"), dict) else {}
        ours = _FROM_LIVE.get((fmt.get("type"), fmt.get("rate")))
        if ours is None or not session.get("model"):
            return [self._error("invalid_request_error", "invalid_value",
                                f"Unsupported session: model {session.get('model')!r}, format {fmt!r}", event)]
        delegation = session.get("delegation") if isinstance(session.get("delegation"), dict) else {}
        self.session.update(instructions=session.get("instructions") or "", input_audio_format=ours,
                            output_audio_format=ours, voice=(audio.get("output") or {}).get("voice") or "marin",
                            tools=(delegation.get("responses") or {}).get("tools") or [])
        view = {"id": self.session["id"], "expires_at": int(now) + 3600, "model": session["model"],
                "status": "active", "instructions": self.session["instructions"],
                "audio": {"format": dict(fmt), "output": {"voice": self.session["voice"]}}}
        if delegation:
            view["delegation"] = delegation
        self._live_session = view
        return [self._event("session.started", session=view)]

    def _on_live_commentary(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        at = int(self._vad.input_ms)
        out = [self._event("session.commentary.appended", start_ms=at, end_ms=at)]
        if self._response is None:  # a commentary worded as an instruction is said (the greeting)
            out += self._start_response(now, str(event.get("content") or ""), b"" if self._heard_caller else None)
        return out

    def _on_live_instructions(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        at = int(self._vad.input_ms)
        out = [self._event("session.instructions.appended", start_ms=at, end_ms=at)]
        if self.config.speak_on_instructions and self._response is None:
            out += self._start_response(now, str(event.get("content") or ""), b"" if self._heard_caller else None)
        self._heard_caller = True
        return out

    def _on_live_update(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Only ``delegation`` and ``triggers`` may change once started: the tools found later."""
        session = event.get("session") if isinstance(event.get("session"), dict) else {}
        delegation = session.get("delegation")
        if isinstance(delegation, dict):
            self.session["tools"] = (delegation.get("responses") or {}).get("tools") or []
            self._live_session = {**self._live_session, "delegation": delegation}
        return [self._event("session.updated", session=self._live_session)]

    def _on_live_item_create(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        item = event.get("item") if isinstance(event.get("item"), dict) else {}
        if item.get("type") == "function_call_output":  # read out by the next response
            self._tool_output = str(item.get("output", ""))
        return []  # Live acknowledges nothing here

    def _on_live_response_create(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        if self._response is not None:
            return []  # already speaking: the result is part of what it says
        return self._start_response(now, None, b"")

    def _on_live_close(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        return [self._event("session.closed", reason="close_requested", session=self._live_session,
                            usage=self._live_usage())]

    def _live_usage(self) -> dict[str, Any]:
        return {"seconds": float(int(self._vad.input_ms / 1000))}

    _LIVE_HANDLERS = {
        "session.start": _on_live_start,
        "session.update": _on_live_update,
        "session.input_audio.append": _on_append,
        "session.commentary.append": _on_live_commentary,
        "session.instructions.append": _on_live_instructions,
        "response.item.create": _on_live_item_create,
        "response.create": _on_live_response_create,
        "session.close": _on_live_close,
    }

    # --- VAD ---

    def _turn_setting(self, key: str, override: bool | None) -> bool:
        """``create_response`` / ``interrupt_response``: the engine's override, else the session's
        turn detection, else true, the real service's default for both."""
        if override is not None:
            return override
        td = self.session.get("turn_detection") or {}
        value = td.get(key)
        return True if value is None else bool(value)

    def _run_vad(self, samples: np.ndarray, rate: int, now: float) -> list[dict[str, Any]]:
        vad, out = self._vad, []
        td = self.session.get("turn_detection")
        if not td:  # no server VAD: the client commits turns itself
            vad.turn += samples.tobytes()
            del vad.turn[: max(0, len(vad.turn) - MAX_TURN_S * rate * 2)]
            return out
        frame = rate * VAD_FRAME_MS // 1000
        buf = np.concatenate((vad.pending, samples))
        n_frames = len(buf) // frame
        vad.pending = buf[n_frames * frame:]
        silence_ms = self.config.silence_ms or int(td.get("silence_duration_ms") or 500)
        for chunk in buf[: n_frames * frame].reshape(n_frames, frame):
            rms = math.sqrt(float(np.mean(chunk.astype(np.float64) ** 2)))
            start_ms = vad.input_ms
            vad.input_ms += VAD_FRAME_MS
            if vad.in_speech:
                if (vad.interrupt_at_ms is not None and vad.input_ms >= vad.interrupt_at_ms
                        and rms >= self.config.vad_stop_rms):
                    out += self._live_interrupt(now)
                vad.turn += chunk.tobytes()
                vad.quiet_ms = 0.0 if rms >= self.config.vad_stop_rms else vad.quiet_ms + VAD_FRAME_MS
                if vad.quiet_ms >= silence_ms:
                    out += self._end_turn(now, stopped=True)
            elif rms >= self.config.vad_start_rms:
                vad.in_speech, vad.quiet_ms = True, 0.0
                vad.item_id = self._id("item")
                vad.turn = bytearray(chunk.tobytes())
                vad.turn_start_ms = start_ms
                r = self._response
                if self.live:  # no speech events: it stops talking a little into the caller's speech
                    if r is not None and not r.cancelled:
                        vad.interrupt_at_ms = start_ms + LIVE_INTERRUPT_MS
                    continue
                out.append(self._event("input_audio_buffer.speech_started",
                                       audio_start_ms=int(start_ms), item_id=vad.item_id))
                if r is not None and not r.cancelled and self._turn_setting("interrupt_response",
                                                                            self.config.interrupt):
                    out += self._cancel(r, "turn_detected", now)
            del vad.turn[: max(0, len(vad.turn) - MAX_TURN_S * rate * 2)]
        return out

    def _live_interrupt(self, now: float) -> list[dict[str, Any]]:
        """Live stops its output for the caller; what the caller says so far is transcribed."""
        vad, r = self._vad, self._response
        vad.interrupt_at_ms = None
        out = [self._event("session.input_transcript.delta", delta="[talking over the agent] ",
                           start_ms=int(vad.turn_start_ms), end_ms=int(vad.input_ms))]
        if r is not None and not r.cancelled:  # its own decision: nothing is in flight after it
            self.interruptions += 1
            r.cancelled = "turn_detected"
            out += self._finish(r)
        return out

    def _end_live_turn(self, now: float) -> list[dict[str, Any]]:
        vad = self._vad
        out = self._transcribe_turn(None)
        out.append(self._event("session.usage.updated", usage=self._live_usage()))
        turn = bytes(vad.turn)
        self._heard_caller = True
        vad.in_speech, vad.quiet_ms, vad.item_id, vad.turn = False, 0.0, None, bytearray()
        vad.interrupt_at_ms = None
        if self._response is None and self._turn_setting("create_response", self.config.respond_to_turns):
            out += self._start_response(now, None, turn)
        return out

    def _end_turn(self, now: float, stopped: bool) -> list[dict[str, Any]]:
        if self.live:
            return self._end_live_turn(now)
        vad = self._vad
        item = vad.item_id or self._id("item")
        out = []
        if stopped:
            out.append(self._event("input_audio_buffer.speech_stopped", audio_end_ms=int(vad.input_ms),
                                   item_id=item))
        out.append(self._event("input_audio_buffer.committed", previous_item_id=self._last_item, item_id=item))
        out.append(self._item_created({"id": item, "object": "realtime.item", "type": "message",
                                       "role": "user", "status": "completed",
                                       "content": [{"type": "input_audio", "transcript": None}]}))
        transcribe = self.config.transcribe_turns
        if self.config.transcription or (
                transcribe if transcribe is not None else bool(self.session.get("input_audio_transcription"))):
            out += self._transcribe_turn(item)
        turn = bytes(vad.turn)
        self._heard_caller = True
        vad.in_speech, vad.quiet_ms, vad.item_id, vad.turn = False, 0.0, None, bytearray()
        td = self.session.get("turn_detection")
        if (td and not self.config.transcription and self._response is None
                and self._turn_setting("create_response", self.config.respond_to_turns)):
            out += self._start_response(now, None, turn)
        return out

    def _transcribe_turn(self, item: str | None) -> list[dict[str, Any]]:
        """The transcript of the turn just ended: now, or a job for the shell when the persona's
        recogniser is too slow to run inside ``receive``."""
        vad = self._vad
        job = TranscriptionJob(item, bytes(vad.turn), RATES[self.session["input_audio_format"]],
                               int(vad.turn_start_ms), int(vad.input_ms))
        if getattr(self.persona, "transcribes_off_loop", False):
            self._jobs.append(job)
            return []
        return self._transcript_events(job, self.persona.transcribe(job.audio, job.rate))

    def _transcript_events(self, job: TranscriptionJob, text: str | None) -> list[dict[str, Any]]:
        """``text`` None: the recogniser gave up; a real service may then send nothing at all."""
        if self.live:
            return [self._event("session.input_transcript.delta", delta=text or "", start_ms=job.start_ms,
                                end_ms=job.end_ms)]
        if text is None:
            return []
        seconds = round(len(job.audio) / 2 / job.rate, 2)
        return [self._event("conversation.item.input_audio_transcription.completed", item_id=job.item_id,
                            content_index=0, transcript=text, usage={"type": "duration", "seconds": seconds})]

    # --- Responses ---

    def _start_response(self, now: float, instructions: str | None, caller_turn: bytes | None
                        ) -> list[dict[str, Any]]:
        n = self._n_responses
        self._n_responses += 1
        after_tool = getattr(self.persona, "after_tool", None)  # a persona that can read a tool's output
        if self._tool_output is not None and after_tool is not None and instructions is None:
            said = after_tool(self._tool_output)
        else:
            said = self.persona.utterance(n, instructions, caller_turn)
        self._tool_output = None
        audio = self._encode_output(said.pcm)
        step = self._bytes_per_ms() * self.config.chunk_ms
        chunks = [audio[i:i + step] for i in range(0, len(audio), step)]
        r = _Response(self._id("resp"), self._id("item"), n, said.text, audio, chunks, now,
                      tool_call=said.tool_call)
        self._response = r
        self._item_audio_ms[r.item_id] = 0.0
        if self.live:  # no response or item events: the audio just starts
            r.timeline_ms = self._vad.input_ms
            return []
        item = {"id": r.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}
        return [
            self._event("response.created", response=self._response_body(r, "in_progress", [])),
            self._event("response.output_item.added", response_id=r.id, output_index=0, item=item),
            self._item_created(item),
            self._event("response.content_part.added", response_id=r.id, item_id=r.item_id,
                        output_index=0, content_index=0, part={"type": "audio", "transcript": ""}),
        ]

    def _delta(self, r: _Response) -> list[dict[str, Any]]:
        chunk = r.chunks[r.sent]
        n = len(r.chunks)
        words = r.text[len(r.text) * r.sent // n: len(r.text) * (r.sent + 1) // n]
        r.sent += 1
        if r.item_id in self._item_audio_ms:  # not if the client deleted the item mid-response
            self._item_audio_ms[r.item_id] += len(chunk) / self._bytes_per_ms()
        if self.live:
            start = int(r.timeline_ms + (r.sent - 1) * self.config.chunk_ms)
            out = [{"type": "session.output_audio.delta", "delta": base64.b64encode(chunk).decode("ascii")}]
            if words:
                out.append(self._event("session.output_transcript.delta", delta=words, start_ms=start,
                                       end_ms=start + int(len(chunk) / self._bytes_per_ms())))
            return out
        where = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        out = [self._event(self.names["audio.delta"], **where, delta=base64.b64encode(chunk).decode("ascii"))]
        if words:
            out.append(self._event(self.names["transcript.delta"], **where, delta=words))
        return out

    def _cancel(self, r: _Response, reason: str, now: float) -> list[dict[str, Any]]:
        r.cancelled = reason
        if self.config.deltas_after_cancel == 0:
            return self._finish(r)
        return []  # ``advance`` lets the in-flight deltas out, then finishes

    def _finish(self, r: _Response) -> list[dict[str, Any]]:
        """audio/transcript/part/item done (or just the item, cancelled), then ``response.done``."""
        self._response = None
        if self.live:  # the audio just stops; a tool call comes from the delegated backend
            if r.tool_call and not r.cancelled:
                item = {"id": self._id("item"), "type": "function_call", "status": "completed",
                        "name": r.tool_call[0], "call_id": self._id("call"), "arguments": r.tool_call[1]}
                return [self._event("response.event", delegation_id=None, event={
                    "type": "response.output_item.done", "response_id": r.id, "output_index": 0,
                    "item": item})]
            return []
        where = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        heard_text = r.text[: len(r.text) * r.sent // max(1, len(r.chunks))]
        out = []
        if not r.cancelled:
            out += [self._event(self.names["audio.done"], **where),
                    self._event(self.names["transcript.done"], **where, transcript=r.text),
                    self._event("response.content_part.done", **where,
                                part={"type": "audio", "transcript": r.text})]
        status = "cancelled" if r.cancelled else "completed"
        item = {"id": r.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "incomplete" if r.cancelled else "completed",
                "content": [{"type": self._assistant_audio, "transcript": heard_text if r.cancelled else r.text}]}
        out.append(self._event("response.output_item.done", response_id=r.id, output_index=0, item=item))
        output = [item]
        if r.tool_call and not r.cancelled:
            call_item, events = self._function_call(r, *r.tool_call)
            out += events
            output.append(call_item)
        out.append(self._event("response.done", response=self._response_body(r, status, output)))
        return out

    def _function_call(self, r: _Response, name: str, arguments: str) -> tuple[dict[str, Any], list]:
        """The model calls a function after speaking, as real models do (goodbye, then end_call)."""
        item = {"id": self._id("item"), "object": "realtime.item", "type": "function_call",
                "status": "completed", "name": name, "call_id": self._id("call"), "arguments": arguments}
        self._items[item["id"]] = "function_call"
        done = {"response_id": r.id, "item_id": item["id"], "output_index": 1, "call_id": item["call_id"],
                "arguments": arguments}
        if self.config.dialect == "ga":
            done["name"] = name  # GA names the function here too; beta only in the item
        return item, [
            self._event("response.output_item.added", response_id=r.id, output_index=1,
                        item={**item, "status": "in_progress", "arguments": ""}),
            self._event("response.function_call_arguments.done", **done),
            self._event("response.output_item.done", response_id=r.id, output_index=1, item=item)]

    def _response_body(self, r: _Response, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"id": r.id, "object": "realtime.response", "status": status,
                                "status_details": None, "output": output, "usage": None}
        if status == "cancelled":
            body["status_details"] = {"type": "cancelled", "reason": r.cancelled}
        if status != "in_progress":
            audio_tokens = round(self._item_audio_ms.get(r.item_id, 0.0) / 50)  # ~20 audio tokens a second
            text_tokens = len(r.text.split())
            body["usage"] = {"total_tokens": audio_tokens + text_tokens + 10, "input_tokens": 10,
                             "output_tokens": audio_tokens + text_tokens,
                             "output_token_details": {"audio_tokens": audio_tokens, "text_tokens": text_tokens}}
        return body

    # --- Helpers ---

    def _bytes_per_ms(self) -> int:
        fmt = self.session["output_audio_format"]
        return RATES[fmt] // 1000 * (2 if fmt == "pcm16" else 1)

    def _encode_output(self, pcm24k: bytes) -> bytes:
        fmt = self.session["output_audio_format"]
        if fmt == "pcm16":
            return pcm24k
        x = np.frombuffer(pcm24k, "<i2").astype(np.float32)
        pcm8k = np.clip(np.rint(soxr.resample(x, VOICE_RATE, 8000)), -32768, 32767).astype("<i2").tobytes()
        return audioop.lin2ulaw(pcm8k, 2) if fmt == "g711_ulaw" else audioop.lin2alaw(pcm8k, 2)

    def _item_created(self, item: dict[str, Any]) -> dict[str, Any]:
        event = self._event("conversation.item.created", previous_item_id=self._last_item, item=item)
        self._last_item = item["id"]
        self._items[item["id"]] = _item_kind(item)
        return event

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):05d}"

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": self._id("event"), "type": kind, **fields}

    def _error(self, type_: str, code: str, message: str, culprit: dict[str, Any] | None) -> dict[str, Any]:
        event_id = culprit.get("event_id") if isinstance(culprit, dict) else None
        if self.live:
            error = {"type": type_, "code": code, "message": message}
            if event_id:
                error["client_event_id"] = event_id
            return self._event("error", error=error)
        return self._event("error", error={"type": type_, "code": code, "message": message, "param": None,
                                           "event_id": event_id})
