"""The call core: one phone call bridged to one Realtime session, with no I/O at all.

It is *told* what happened (a Twilio event, a Realtime event, the clock) and *answers* with
the actions to carry out. The shells own the sockets, the tasks and the clock. Everything
time-dependent takes ``now`` (seconds, monotonic) as an argument, so tests drive it with a
fake clock and no sleeps.
"""

from __future__ import annotations

import binascii
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Union

from telephony.core import sip, tools
from telephony.core.actions import (
    Action,
    EndStream,
    HangUp,
    OpenRealtime,
    Record,
    ToRealtime,
    ToTwilio,
    Transfer,
)
from telephony.core.audio import ULAW_BYTES_PER_MS, ModelAudio, make_codec
from telephony.core.barge_in import BargeInPolicy, ItemEnd, Pause
from telephony.core.business_tools import BusinessTools
from telephony.core.function_tools import FunctionTool
from telephony.core.interruptions import Interruptions
from telephony.core.paced import PacedAgent
from telephony.core.pacing import AgentPacer
from telephony.core.playout import PlayoutLedger, Unheard
from telephony.core.profile import Profile
from telephony.core.reflected import ReflectedPlayout
from telephony.core.tool_calls import PendingTools, output_text
from telephony.core.turns import Turn, TurnGrouper
from telephony.core.vad import EnergyVad
from telephony.wire import live_sip
from telephony.wire import openai_sip as sideband
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

log = logging.getLogger("telephony.call")

# Caller audio that arrives before the model is connected is kept (up to this much) and sent
# once it is: the caller's first words are not lost while the upstream handshake runs.
EARLY_AUDIO_FRAMES = 100  # 2 s of 20 ms frames
DTMF_GAP_S = 1.0  # digits closer together than this are one burst, one message
DTMF_BURST_MAX = 64  # keys kept per burst (a card number is 19)
MARK_NAME_LOGGED = 24  # characters of a stranger's mark name in a log line (ours are a counter)
# Hang-up/transfer waits for the agent's last words to be heard, but never longer than this.
AFTER_PLAYOUT_TIMEOUT_S = 20.0
MACHINE_ANSWERS = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
RECONNECTS = 1  # a dropped Realtime socket is reopened this many times per call
# A session that must be started (Live) and is not within this long is dead: the caller would
# otherwise sit in silence. (Connecting has its own, shorter, deadline in the shell.)
SESSION_START_TIMEOUT_S = 5.0
# Without response events (Live) the only sign the agent has finished is silence: a hang-up or
# transfer after a tool call waits for this much of it, so the model's last words are not cut.
QUIET_BEFORE_AFTER_PLAYOUT_S = 1.0
# A tool that was running when its call moved to another instance: its outcome is unknown there,
# and running it again could act twice (a booking, a payment), so the model is told so instead.
INTERRUPTED_TOOL = ("this tool was interrupted by a service restart: it may or may not have completed. "
                    "Do not assume it did; tell the caller and check before calling it again.")

# Decides whether a stream may start (e.g. checks its signed token): None, or why not.
StartVerifier = Callable[[tw.Start], Union[str, None]]
# The profile a stream's "profile" parameter names ("" when it names none).
ProfilePicker = Callable[[str], Profile]


@dataclass
class _Response:
    id: str
    items: dict[str, None] = field(default_factory=dict)  # its audio items, in order (an ordered set)


class Call(Interruptions, PacedAgent, BusinessTools):
    """One call's state. Not thread-safe; the shells feed it from one event loop.

    Its modes' parts live in modules of their own, mixed in here: ``core.interruptions`` (the
    caller speaking over the agent, with truncate), ``core.paced`` (without truncate: Live over
    a media stream) and ``core.business_tools`` (tools the shell runs).

    ``carries_media=False`` is a call whose audio never passes through us (OpenAI's SIP route):
    it starts with ``begin`` instead of a Twilio start, its session was configured when the call
    was accepted, the SIP side plays the agent and handles barge-in itself, and "the caller has
    heard everything" is the sideband's ``output_audio_buffer.stopped``, not our marks.
    """

    def __init__(self, profile: Profile, audio_codec: str = "pcm16", *,
                 verify_start: StartVerifier | None = None,
                 media_timeout_s: float | None = None, pick_profile: ProfilePicker | None = None,
                 carries_media: bool = True, capabilities: rt.Capabilities | None = None,
                 model: str = "", delegation_model: str = "") -> None:
        self.profile = profile
        self.pick_profile = pick_profile
        self.carries_media = carries_media
        self._agent_audible = False  # without media: between output_audio_buffer.started and stopped
        self._function_tools: dict[str, FunctionTool] = {}  # business tools, by name
        self._tools_unsent = False  # without media: tools found after the accept, for the next sideband
        self._tool_calls = PendingTools()
        self.capabilities = capabilities or rt.Capabilities()
        self.model, self.delegation_model = model, delegation_model
        self._session_ready = not self.capabilities.ready_first
        self._opened_at: float | None = None  # when the upstream socket opened, until it is ready
        # Without truncate: agent audio paced to real time, the caller heard by our own VAD, and
        # transcripts grouped into turns from their timeline.
        paced = not self.capabilities.truncate and carries_media  # without media the SIP side plays
        self.reflected = ReflectedPlayout()  # Live SIP: what the caller heard, by the session clock
        self.pacer = AgentPacer() if paced else None
        self.vad = EnergyVad() if paced else None
        self.turns = TurnGrouper()
        self._turns_said: list[Turn] = []  # closed turns, to restore a reconnected Live session
        self._input_ms = 0.0  # caller audio sent upstream: the session's timeline (paced dialects)
        self._agent_from_ms = 0.0  # where on that timeline the agent audio now queued began
        self._muted_until: float | None = None
        self._agent_active_at = 0.0  # last agent audio (or tool call) seen, paced dialects
        self.audio_format = audio_codec
        self.codec = make_codec(audio_codec)
        self.ledger = PlayoutLedger()
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.parameters: dict[str, str] = {}
        self.realtime_open = False
        self.ended = False
        self._handing_over = False  # a handoff under way: an end is held until Twilio answers
        self._held_end: tuple[str, bool] | None = None
        self._early_audio: list[str] = []
        self._response: _Response | None = None  # the response in progress, if any
        self._dropped_responses: set[str] = set()
        self._dropped_items: set[str] = set()
        self._transcripts: dict[str, list[str]] = {}  # agent item → transcript deltas
        self._dtmf: list[str] = []
        self._dtmf_last = 0.0
        self._after_playout: tuple[Action, float] | None = None  # (action, deadline)
        self._respond_when_done = False  # a tool answered: ask the model to speak after this response
        self._awaiting_response = False  # we asked for a response the server has not started yet
        self._function_names: dict[str, str] = {}  # call_id → name (beta names it only here)
        self._started_at = 0.0
        self.verify_start = verify_start
        self.media_timeout_s = media_timeout_s
        self._last_heard: float | None = None  # last Twilio message; None until the first tick
        self._reconnects_left = RECONNECTS
        self._sessions = 0  # Realtime sessions opened so far
        self._history: list[tuple[str, str]] = []  # (role, item id) in conversation order
        self._caller_text: dict[str, str] = {}  # caller item → transcript
        self._known_responses: set[str] = set()
        self._warned_items: set[str] = set()
        self.resumed = False  # this stream continues a call handed over from another one
        self._pause: Pause | None = None  # the agent paused by caller speech, until decided
        # A response we cancelled, until its response.done: a response.create sent before then is
        # refused (conversation_already_has_active_response).
        self._cancelling: str | None = None
        self._resumed_items: set[str] = set()  # agent items a false interruption paused, played whole
        self._greeted_elsewhere = True  # an adopted call without media: its first instance greeted
        self._interrupted: list[tuple[str, str, Any]] = []  # adopted: tools that were running there

    # --- Twilio side ---

    def on_twilio(self, event: tw.TwilioEvent, now: float) -> list[Action]:
        if self.ended:
            return []
        self._last_heard = now
        if isinstance(event, tw.Media):
            return self._on_media(event, now)
        if isinstance(event, tw.Mark):
            if not self.ledger.echoed(event.name, now):
                if self.ledger.issued(event.name):
                    log.debug("call %s: mark %r echoed after a clear", self.call_sid, event.name)
                else:
                    log.warning("call %s: Twilio echoed mark %r, which we never sent; ignored",
                                self.call_sid, event.name[:MARK_NAME_LOGGED])
                return []
            return self._check_after_playout(now)
        if isinstance(event, tw.Start):
            self._started_at = now
            return self._on_start(event)
        if isinstance(event, tw.Dtmf):
            if len(self._dtmf) < DTMF_BURST_MAX:  # a burst is a PIN or a card, not a flood to pass on
                self._dtmf.append(event.digit)
            self._dtmf_last = now
            return []
        if isinstance(event, tw.Stop):
            if self.stream_sid is None:  # never started: no call to record (metrics: no_start)
                self.ended = True
                return [EndStream("stream closed before start")]
            return self._end("caller hung up (Twilio stop)")
        return []  # Connected: nothing to do until start

    def begin(self, call_id: str, parameters: dict[str, str], now: float) -> list[Action]:
        """A call without media starts (it has been accepted): record it and open the sideband."""
        self.call_sid = call_id
        self.parameters = dict(parameters)
        self._started_at = now
        self._function_tools = {t.name: t for t in self.profile.function_tools}  # declared in the accept
        return [Record("start", {"call_sid": call_id, "stream_sid": None}), OpenRealtime()]

    def _on_start(self, event: tw.Start) -> list[Action]:
        if self.stream_sid is not None:
            log.warning("call %s: second start (stream %s) ignored", self.call_sid, event.stream_sid)
            return []
        if self.verify_start is not None:
            refused = self.verify_start(event)
            if refused:
                log.warning("call %s: stream refused: %s", event.call_sid, refused)
                self.call_sid = event.call_sid
                self.ended = True
                return [Record("refused", {"reason": refused}),
                        EndStream(f"stream refused: {refused}", abnormal=True, policy_violation=True)]
        if (event.encoding, event.sample_rate, event.channels) != ("audio/x-mulaw", 8000, 1):
            log.error("call %s: unsupported media format %s/%d/%d", event.call_sid, event.encoding,
                      event.sample_rate, event.channels)
            self.call_sid = event.call_sid
            return self._end(f"unsupported media format {event.encoding}", abnormal=True)
        self.stream_sid = event.stream_sid
        self.call_sid = event.call_sid
        self.parameters = {k: v for k, v in event.custom_parameters.items() if k != "token"}
        if self.pick_profile is not None:
            self.profile = self.pick_profile(self.parameters.get("profile", ""))
        self._function_tools = {t.name: t for t in self.profile.function_tools}
        return [Record("start", {"call_sid": event.call_sid, "stream_sid": event.stream_sid}),
                OpenRealtime()]

    @property
    def barge_in(self) -> BargeInPolicy:
        """The profile's ``[barge_in]`` with the call's own overrides (``POST /calls``)."""
        return self.profile.barge_in.overridden_by(self.parameters.get("barge_in"))

    def _on_media(self, event: tw.Media, now: float) -> list[Action]:
        if self.stream_sid is None:
            log.warning("call ?: media before start dropped (no call sid yet)")
            return []
        if event.stream_sid and event.stream_sid != self.stream_sid:
            log.warning("call %s: media for another stream (%s) dropped", self.call_sid, event.stream_sid)
            return []
        if event.track not in ("inbound", "inbound_track"):
            return []
        if not event.payload:
            log.warning("call %s: empty media payload dropped", self.call_sid)
            return []
        try:
            audio = self.codec.caller_to_model(event.payload)
        except (binascii.Error, ValueError) as exc:
            log.warning("call %s: media payload is not base64 (%s); frame dropped", self.call_sid, exc)
            return []
        if self.pacer is not None:
            return self._paced_media(event.payload, audio, now)
        if not self.realtime_open:
            if len(self._early_audio) < EARLY_AUDIO_FRAMES:
                self._early_audio.append(audio)
            return []
        return [ToRealtime(rt.AppendAudio(audio))]

    def _paced_media(self, payload: str, audio: str, now: float) -> list[Action]:
        """A caller frame where agent audio is paced: listen for barge-in, let audio out."""
        actions = self._listen(payload, now) + self._release(now)
        if not (self.realtime_open and self._session_ready):
            if len(self._early_audio) < EARLY_AUDIO_FRAMES:
                self._early_audio.append(audio)
                self._input_ms += len(payload) * 3 / 4 / ULAW_BYTES_PER_MS
            return actions
        self._input_ms += len(payload) * 3 / 4 / ULAW_BYTES_PER_MS
        actions.append(ToRealtime(rt.AppendAudio(audio)))
        return actions

    # --- Realtime side ---

    def on_realtime_open(self, now: float) -> list[Action]:
        """The upstream socket is up: configure the session, greet, send the early audio."""
        self.realtime_open = True
        self._sessions += 1
        if not self.carries_media:  # the session came with the accept; the server keeps it
            actions: list[Action] = []
            if self._tools_unsent:  # before the greeting, so that it may already use them
                self._tools_unsent = False
                actions.append(ToRealtime(rt.ConfigureSession(self.session_config())))
            if self._sessions == 1:
                return actions + (self._adopted() if self.resumed else self._greet())
            return actions + [Record("realtime_reconnected", {"items": len(self._history)})]
        actions = [ToRealtime(rt.ConfigureSession(self.session_config()))]
        if not self._session_ready:
            self._opened_at = now
            return actions  # the rest once the session says it is ready
        return actions + self._session_opened()

    def _session_opened(self) -> list[Action]:
        """Restores the conversation (on a reconnect) or greets, then sends the early audio."""
        actions: list[Action] = []
        if self._sessions > 1 or self.resumed:
            actions.extend(self._restore_conversation())
            kind = "realtime_reconnected" if self._sessions > 1 else "resumed"
            actions.append(Record(kind, {"items": len(self._history)}))
        if self._sessions == 1 and not self.resumed:
            actions.extend(self._greet())
        actions.extend(ToRealtime(rt.AppendAudio(a)) for a in self._early_audio)
        self._early_audio.clear()
        return actions

    def _greet(self) -> list[Action]:
        greeting = self.parameters.get("greeting", self.profile.greeting)
        # "silent_start": the call was placed with an empty greeting (TwiML drops empty parameters).
        if not greeting or self.parameters.get("silent_start"):
            return []
        return [self._create_response(f"Greet the caller by saying exactly this, then wait for them: {greeting}")]

    def session_config(self) -> rt.SessionConfig:
        """Per-call overrides arrive as signed stream parameters; the profile fills the rest. The
        SIP headers the profile lets through are appended to the instructions as context."""
        instructions = self.parameters.get("instructions") or self.profile.instructions
        instructions += sip.context_note(sip.headers_from_parameters(self.parameters))
        # Tools found at call time (an MCP server's) beside the profile's own.
        extra = tuple(t.declaration() for t in self._function_tools.values()
                      if t not in self.profile.function_tools)
        config = self.profile.session_config(self.codec.model_format, instructions=instructions,
                                             voice=self.parameters.get("voice"), extra_tools=extra)
        if self.model or self.delegation_model:  # dialects that name the model in the session (Live)
            config = replace(config, model=self.model, delegation_model=self.delegation_model)
        if self.carries_media and self.capabilities.truncate:
            # The bridge asks for every answer and decides what caller speech does to one
            # (core.barge_in): a backchannel must not cancel what the caller is hearing.
            config = replace(config, turn_detection=replace(
                config.turn_detection, create_response=False, interrupt_response=False))
        return config

    def on_realtime_closed(self, reason: str, call_over: bool = False,
                           close_code: int | None = None) -> list[Action]:
        """The upstream socket closed, or never opened. A drop mid-call is retried once.
        ``call_over``: a sideband the server closed cleanly, as it does when the call ends.
        ``close_code``: the provider's close frame's code; a refusal (4000) is never retried."""
        was_open, self.realtime_open = self.realtime_open, False
        self._session_ready = not self.capabilities.ready_first
        if self.ended:
            return []
        if close_code == rt.FINAL_CLOSE_CODE:  # a reconnect would get the same answer
            if rt.RETIRED_SHAPE_CODE in reason:
                log.error("call %s: %s", self.call_sid, rt.RETIRED_SHAPE_FIX)
                reason = rt.RETIRED_SHAPE_FIX
            else:
                log.error("call %s: Realtime refused the session (%s); not retried", self.call_sid, reason)
            if not self.carries_media:  # the call goes on at OpenAI: hang it up rather than leave it unsteered
                return [HangUp(f"Realtime refused: {reason}", abnormal=True)]
            return self._end(f"Realtime refused: {reason}", abnormal=True)
        if not self.carries_media:
            return self._sideband_closed(reason, was_open, call_over)
        if was_open and self._reconnects_left > 0:
            self._reconnects_left -= 1
            log.warning("call %s: Realtime session dropped (%s); reconnecting", self.call_sid, reason)
            self._response = self._cancelling = None  # the new session starts afresh
            return [Record("realtime_dropped", {"reason": reason}), OpenRealtime()]
        log.error("call %s: Realtime session closed: %s", self.call_sid, reason)
        return self._end(f"Realtime closed: {reason}", abnormal=True)

    def _sideband_closed(self, reason: str, was_open: bool, call_over: bool) -> list[Action]:
        """The call goes on at OpenAI whatever happens to our socket: a drop is reconnected once
        (the server keeps the session: nothing to restore); a call we cannot steer is hung up
        rather than left running without tools or end_call."""
        if call_over:
            log.info("call %s: sideband closed: %s", self.call_sid, reason)
            return self._end(f"sideband closed: {reason}")
        if was_open and self._reconnects_left > 0:
            self._reconnects_left -= 1
            log.warning("call %s: sideband dropped (%s); reconnecting", self.call_sid, reason)
            return [Record("realtime_dropped", {"reason": reason}), OpenRealtime()]
        log.error("call %s: no sideband (%s); hanging up", self.call_sid, reason)
        return [HangUp(reason, abnormal=True)]

    def _restore_conversation(self) -> list[Action]:
        """The conversation so far, as text items, so the new session knows what was said."""
        return [ToRealtime(rt.AddUserText(text) if role == "user" else rt.AddAssistantText(text))
                for role, text in self.conversation()]

    def conversation(self) -> list[tuple[str, str]]:
        """(role, text) in order: what the caller said, and what of the agent's words they heard."""
        turns = [("user" if turn.speaker == "caller" else "assistant", turn.text)
                 for turn in self._turns_said]  # dialects without items (Live) have turns instead
        turns += [(role, self._caller_text.get(item, "") if role == "user" else self.agent_transcript(item))
                  for role, item in self._history]
        return [(role, text) for role, text in turns if text]

    # --- Handoff: the call moves to another stream (another instance) on shutdown ---

    def snapshot(self) -> dict[str, Any]:
        """What another stream needs to carry the call on: the conversation and the call's settings
        (its per-call overrides, and the profile's instructions and voice it was started with)."""
        parameters = dict(self.parameters)
        parameters.setdefault("instructions", self.profile.instructions)
        parameters.setdefault("voice", self.profile.voice)
        return {"conversation": self.conversation(), "parameters": parameters}

    def resume(self, saved: dict[str, Any]) -> None:
        """Before the Realtime session opens: carry on the call ``saved`` by ``snapshot()``; the
        session then gets the conversation so far instead of a greeting."""
        self.resumed = True
        self.parameters = {**saved.get("parameters", {}), **self.parameters}
        for n, (role, text) in enumerate(saved.get("conversation", ())):
            item = f"resumed_{n}"
            self._history.append((role, item))
            if role == "user":
                self._caller_text[item] = text
            else:
                self._transcripts[item] = [text]

    # --- A call without media moved to another instance: its sideband is attached there ---

    def parked(self) -> dict[str, Any]:
        """What another instance needs to steer this call on (``adopt``): its settings, the
        conversation, whether the greeting was asked for, the tools still running here, and a
        hang-up or transfer waiting for the goodbye to be heard."""
        waiting = None
        if self._after_playout is not None:
            action = self._after_playout[0]
            waiting = ({"hang_up": action.reason} if isinstance(action, HangUp) else
                       {"transfer": action.number, "refer": action.refer} if isinstance(action, Transfer) else None)
        return {"parameters": dict(self.parameters), "conversation": self.conversation(),
                "greeted": self._sessions > 0, "after_playout": waiting,
                "pending_tools": [{"call_id": c.call_id, "name": c.tool.name, "arguments": c.arguments}
                                  for c in self._tool_calls.running()]}

    def adopt(self, saved: dict[str, Any], now: float) -> None:
        """After ``begin``: this call was steered by another instance until it stopped (``parked``).
        The session goes on at OpenAI, so nothing is restored to it: no second greeting, the tools
        that were running there are answered as interrupted, a pending hang-up is armed again."""
        self.resume({"conversation": saved.get("conversation", ())})
        self._greeted_elsewhere = bool(saved.get("greeted", True))
        self._interrupted = [(t["call_id"], t["name"], t.get("arguments")) for t in saved.get("pending_tools", ())
                             if isinstance(t, dict) and t.get("call_id")]
        waiting = saved.get("after_playout") or {}
        action = (HangUp(str(waiting["hang_up"])) if "hang_up" in waiting else
                  Transfer(str(waiting["transfer"]), bool(waiting.get("refer"))) if "transfer" in waiting else None)
        if action is not None:
            self._after_playout = (action, now + AFTER_PLAYOUT_TIMEOUT_S)

    def _adopted(self) -> list[Action]:
        """The first sideband of an adopted call."""
        greeting = [] if self._greeted_elsewhere else self._greet()
        actions: list[Action] = list(greeting)
        interrupted, self._interrupted = self._interrupted, []
        for call_id, name, arguments in interrupted:
            actions += [ToRealtime(rt.AddFunctionOutput(call_id, output_text({"error": INTERRUPTED_TOOL}))),
                        Record("tool_call", {"name": name, "arguments": arguments, "error": INTERRUPTED_TOOL,
                                             "outcome": "interrupted"})]
        if interrupted and not greeting:  # the model speaks about them
            actions.append(self._create_response())
        return actions + [Record("resumed", {"items": len(self._history), "interrupted_tools": len(interrupted)})]

    def on_realtime(self, event: rt.Event | sideband.SidebandEvent | live_sip.SidebandEvent,
                    now: float) -> list[Action]:
        if self.ended:
            return []
        if not self.carries_media:
            handled = self._on_sideband(event, now)
            if handled is not None:
                return handled
        if isinstance(event, rt.AudioDelta):
            return self._on_audio_delta(event, now)
        if isinstance(event, rt.SpeechStarted):
            self._history.append(("user", event.item_id))
            return self._on_speech_started(event, now)
        if isinstance(event, rt.SpeechStopped):  # the turn-latency clock starts here
            if self._pause is not None and self._pause.speech_item == event.item_id:
                self._pause.stopped(now, self._vad_silence_s())
            return [Record("speech_stopped", {"item_id": event.item_id, "audio_end_ms": event.audio_end_ms}),
                    *self._decide_pause(now)]
        if isinstance(event, rt.TurnCommitted):
            return self._on_turn_committed(event, now)
        if isinstance(event, rt.ResponseCreated):
            self._response = _Response(event.response_id)
            self._awaiting_response = False
            self._known_responses.add(event.response_id)
            return []
        if isinstance(event, rt.AudioDone):
            return self._on_audio_done(event)
        if isinstance(event, rt.TranscriptDelta):
            if event.item_id not in self._dropped_items:
                self._note_agent_item(event.item_id)
                self._transcripts.setdefault(event.item_id, []).append(event.delta)
            return []
        if isinstance(event, rt.ResponseDone):
            return self._on_response_done(event, now)
        if isinstance(event, rt.FunctionCall):
            return self._on_function_call(event, now)
        if isinstance(event, rt.OutputItemAdded):
            if event.type == "function_call" and event.call_id:
                self._function_names[event.call_id] = event.name
            return []
        if isinstance(event, rt.InputTranscript):
            if ("user", event.item_id) not in self._history:
                self._history.append(("user", event.item_id))
            self._caller_text[event.item_id] = event.transcript
            decided: list[Action] = []
            if self._pause is not None and self._pause.speech_item == event.item_id:
                self._pause.transcript = event.transcript
                decided = self._decide_pause(now)
            # The agent's turn the caller spoke over began first: its record (cut or whole) goes first.
            return decided + [self._transcript("caller", event.item_id, event.transcript, now)]
        if isinstance(event, rt.TranscriptDone):
            if event.item_id in self._dropped_items:
                return []  # already recorded, cut to what was heard, at the barge-in
            self._note_agent_item(event.item_id)
            self._transcripts[event.item_id] = [event.transcript]
            if self._pause is not None:  # whole or cut: recorded once the pause is decided
                self._pause.transcripts_done[event.item_id] = event.transcript
                return []
            extra = {"resumed": True} if event.item_id in self._resumed_items else {}
            return [self._transcript("agent", event.item_id, event.transcript, now, **extra)]
        if isinstance(event, rt.RealtimeError):
            return self._on_error(event)
        if isinstance(event, rt.TimedTranscript):
            return self._on_timed_transcript(event, now)
        if isinstance(event, rt.SessionReady) and not self._session_ready:
            self._session_ready = True
            return self._session_opened()
        if isinstance(event, rt.UsageUpdated):
            return [Record("usage", {**event.usage, "final": event.final})]
        return []

    def _on_sideband(self, event: rt.Event | sideband.SidebandEvent | live_sip.SidebandEvent,
                     now: float) -> list[Action] | None:
        """What a call without media does differently; None: handle the event as usual."""
        if isinstance(event, live_sip.AgentAudioReflected):  # heard once the session clock passes it
            self.reflected.reflected(event.start_ms, event.end_ms, now)
            self._agent_audible = True
            return []
        if isinstance(event, live_sip.SessionClosed):
            log.info("call %s: session closed: %s", self.call_sid, event.reason)
            return [Record("usage", {**event.usage, "final": True, "reason": event.reason}),
                    *self._end(f"session closed: {event.reason}",
                               abnormal=event.reason not in live_sip.NORMAL_CLOSE_REASONS)]
        if isinstance(event, rt.TimedTranscript) and self.capabilities is live_sip.capabilities:
            if event.speaker == "agent":  # the words' range: speech, even where reflections have gaps
                self.reflected.reflected(event.start_ms, event.end_ms, now)
                self._agent_audible = True
            else:  # the caller's words were said before they arrive
                self.reflected.clock(event.end_ms, now)
            return None
        if isinstance(event, sideband.AgentAudioStarted):
            self._agent_audible = True
            return []
        if isinstance(event, sideband.AgentAudioStopped):
            self._agent_audible = False
            return self._check_after_playout(now)
        if isinstance(event, rt.TurnCommitted):
            return []  # the SIP session answers its turns itself
        if isinstance(event, sideband.KeypadDigit):
            if event.digit:
                self._dtmf.append(event.digit[:1])
                self._dtmf_last = now
            return []
        if isinstance(event, rt.SpeechStarted):  # the SIP side stops its own playback
            self._history.append(("user", event.item_id))
            return []
        if isinstance(event, (rt.AudioDelta, rt.AudioDone)):
            return []  # nothing to play: the SIP side plays the agent
        if isinstance(event, rt.TranscriptDelta) and self._response is not None \
                and self._response.id == event.response_id:
            self._response.items[event.item_id] = None  # the agent is speaking in this response
        return None

    def _on_audio_delta(self, event: rt.AudioDelta, now: float) -> list[Action]:
        if event.response_id in self._dropped_responses or event.item_id in self._dropped_items:
            return []  # audio of an interrupted response still in flight
        if self._response is not None and self._response.id == event.response_id:
            self._response.items[event.item_id] = None
        elif (self.capabilities.responses and event.response_id not in self._known_responses
              and event.item_id not in self._warned_items):
            self._warned_items.add(event.item_id)  # played anyway: better heard than lost
            log.warning("call %s: audio for item %r of response %r, which was never announced",
                        self.call_sid, event.item_id, event.response_id)
        try:
            chunk = self.codec.model_to_caller(event.audio)
        except (binascii.Error, ValueError) as exc:
            log.warning("call %s: audio delta is not base64 (%s); dropped", self.call_sid, exc)
            return []
        if chunk.model_ms <= 0:
            return []
        if self.pacer is not None:
            return self._pace(event.item_id, chunk, now)
        if self._pause is not None:  # played after what the caller has not heard yet, if resumed
            self._pause.held.append(Unheard(event.item_id, chunk.payload, chunk.model_ms))
            return []
        return self._send_agent_audio(event.item_id, chunk, now)

    def _send_agent_audio(self, item_id: str, chunk: ModelAudio, now: float) -> list[Action]:
        actions: list[Action] = []
        if (before := self.ledger.before(item_id)) is not None:
            actions.append(ToTwilio(tw.SendMark(before)))
        if chunk.payload:
            actions.append(ToTwilio(tw.SendMedia(chunk.payload)))
        if (name := self.ledger.sent(item_id, chunk.model_ms, now, chunk.payload)) is not None:
            actions.append(ToTwilio(tw.SendMark(name)))
        return actions

    def _on_response_done(self, event: rt.ResponseDone, now: float) -> list[Action]:
        if self._response and self._response.id == event.response_id:
            self._response = None
        if event.response_id == self._cancelling:
            self._cancelling = None
        actions: list[Action] = [Record("response_done", {
            "response_id": event.response_id, "status": event.status, "usage": event.usage})]
        if (self._pause is not None and event.status == "cancelled"
                and event.response_id not in self._dropped_responses):
            self._pause.server_cancelled = True  # a server that still interrupts by itself
            return actions + self._decide_pause(now)
        if self._respond_when_done and not self._agent_busy():
            self._respond_when_done = False
            actions.append(self._create_response())
        return actions + self._check_after_playout(now)

    def _on_function_call(self, event: rt.FunctionCall, now: float) -> list[Action]:
        name = event.name or self._function_names.pop(event.call_id, "")
        if name in self._function_tools and name not in tools.REGISTRY:
            return self._start_tool(event.call_id, self._function_tools[name], event.arguments, now)
        result = tools.dispatch(name, event.arguments, self.profile)
        log.info("call %s: tool %s → %s", self.call_sid, name, "error" if result.failed else "ok")
        actions: list[Action] = [
            ToRealtime(rt.AddFunctionOutput(event.call_id, json.dumps(result.output))),
            Record("tool_call", {"name": name, "arguments": event.arguments, "output": result.output,
                                 "outcome": _builtin_outcome(name, result.failed, self.profile)})]
        self._agent_active_at = now
        if result.after_playout is not None and self._after_playout is None:
            self._after_playout = (self._by_refer(result.after_playout), now + AFTER_PLAYOUT_TIMEOUT_S)
        # The model speaks about the result: always after an error; after success only if it
        # has not already spoken in this response (it often says goodbye and calls end_call).
        spoke = self._response is not None and self._response.items
        if result.failed or not spoke:
            if self._response is None:
                actions.append(self._create_response())
            else:
                self._respond_when_done = True
        return actions

    def _agent_busy(self) -> bool:
        """The agent is talking, about to, or paused by the caller: a new answer waits."""
        return (self._response is not None or self._awaiting_response or self._pause is not None
                or self._cancelling is not None)

    def _by_refer(self, action: Action) -> Action:
        """A transfer to a SIP URI on a call that came in over SIP goes by REFER when the profile
        says so (numbers are always dialled: <Refer> takes a SIP URI)."""
        if (isinstance(action, Transfer) and self.profile.sip_refer and sip.is_sip_uri(action.number)
                and sip.is_sip_uri(self.parameters.get("from", ""))):
            return replace(action, refer=True)
        return action

    def _create_response(self, instructions: str | None = None) -> ToRealtime:
        self._awaiting_response = self.capabilities.responses  # else no event would clear it
        return ToRealtime(rt.CreateResponse(instructions))

    def _check_after_playout(self, now: float) -> list[Action]:
        """Hang up or transfer once the agent is silent and everything sent has been heard."""
        if self._after_playout is None:
            return []
        action, deadline = self._after_playout
        done = (not self._agent_busy() and not self._respond_when_done
                and not self.ledger.unplayed and not self._agent_audible and not (self.pacer is not None and (
                    self.pacer.holding or now - self._agent_active_at < QUIET_BEFORE_AFTER_PLAYOUT_S))
                and not self._goodbye_may_follow(now))
        if not done and now < deadline:
            return []
        self._after_playout = None
        return [Record("after_playout", {"action": type(action).__name__, "timed_out": not done}),
                action]

    def _goodbye_may_follow(self, now: float) -> bool:
        """Live SIP: a delegated end_call often comes before the goodbye is spoken, and no event
        announces speech: wait a quiet second after the tool call and the last reflection."""
        if self.carries_media or self.capabilities.responses:
            return False
        last = max(self._agent_active_at, self.reflected.last_reflected_at or 0.0)
        return now - last < QUIET_BEFORE_AFTER_PLAYOUT_S

    def on_answered_by(self, answered_by: str, now: float) -> list[Action]:
        """Twilio's async answering-machine detection has a verdict for this outbound call."""
        if self.ended:
            return []  # too late: the stream is over, nothing may be started for it
        actions: list[Action] = [Record("answered_by", {"answered_by": answered_by})]
        if answered_by == "fax":
            return actions + [HangUp("answered by a fax machine")]
        if answered_by not in MACHINE_ANSWERS or self._after_playout is not None:
            return actions  # a human (or not sure yet): converse as usual
        message = self.parameters.get("voicemail") or self.profile.voicemail
        if not message or not self.realtime_open:
            return actions + [HangUp(f"voicemail ({answered_by}), nothing to leave")]
        if self.pacer is not None:
            self.pacer.drop()
        self._pause = None  # what it held is not for a machine's beep either
        if self.ledger.unplayed:  # stop talking over the beep
            actions.append(ToTwilio(tw.SendClear()))
            self.ledger.clear()
            self.codec.interrupted()
        if self._response is not None:
            actions.append(ToRealtime(rt.CancelResponse()))
            self._dropped_responses.add(self._response.id)
            self._dropped_items.update(self._response.items)
            self._response = None
        actions.append(self._create_response(
            f"You reached an answering machine and the beep has sounded. Leave exactly this "
            f"message, then stop: {message}"))
        self._after_playout = (HangUp(f"voicemail left ({answered_by})"), now + AFTER_PLAYOUT_TIMEOUT_S)
        return actions

    def _on_audio_done(self, event: rt.AudioDone) -> list[Action]:
        if event.response_id in self._dropped_responses or event.item_id in self._dropped_items:
            return []
        tail = self.codec.end_of_item()
        if self._pause is not None:
            if tail:
                self._pause.held.append(Unheard(event.item_id, tail, len(tail) * 3 / 4 / ULAW_BYTES_PER_MS))
            self._pause.held.append(ItemEnd(event.item_id))
            return []
        actions: list[Action] = [ToTwilio(tw.SendMedia(tail))] if tail else []
        if (name := self.ledger.seal()) is not None:  # the item's last audio: know when it ends
            actions.append(ToTwilio(tw.SendMark(name)))
        return actions

    def _transcript(self, speaker: str, item_id: str, text: str, now: float, **extra: Any) -> Record:
        """One turn of the call's transcript; ``at`` is seconds since the stream started."""
        return Record("transcript", {"speaker": speaker, "item_id": item_id, "text": text,
                                     "at": round(now - self._started_at, 3), **extra})

    def _on_error(self, event: rt.RealtimeError) -> list[Action]:
        if event.retired:  # one line that says what to change, not the provider's message
            log.error("call %s: %s", self.call_sid, rt.RETIRED_SHAPE_FIX)
            return [Record("realtime_error", {"type": event.type, "code": event.code}),
                    *self._end(f"Realtime refused: {rt.RETIRED_SHAPE_FIX}", abnormal=True)]
        # Our cancel racing the server's own VAD cancel is expected, not a fault.
        level = logging.INFO if event.benign else logging.ERROR
        log.log(level, "call %s: Realtime error %s/%s (event %s): %s", self.call_sid, event.type,
                event.code, event.event_id, event.message)
        actions: list[Action] = [Record("realtime_error", {"type": event.type, "code": event.code})]
        if event.fatal:
            actions.extend(self._end(f"Realtime error {event.code or event.type}", abnormal=True))
        return actions

    # --- Clock ---

    def on_tick(self, now: float) -> list[Action]:
        if self.ended:
            return []
        if self._last_heard is None:
            self._last_heard = now  # the clock starts with the stream
        elif self.media_timeout_s is not None and now - self._last_heard > self.media_timeout_s:
            log.error("call %s: nothing from Twilio for %.1f s; the stream is dead",
                      self.call_sid, now - self._last_heard)
            return self._end(f"no media for {self.media_timeout_s:g} s", abnormal=True)
        if (self.realtime_open and not self._session_ready and self._opened_at is not None
                and now - self._opened_at > SESSION_START_TIMEOUT_S):
            log.error("call %s: the Realtime session did not start within %g s", self.call_sid,
                      SESSION_START_TIMEOUT_S)
            return self._end("Realtime session did not start", abnormal=True)
        actions = self._flush_dtmf(now)
        if self.pacer is not None:
            actions += self._release(now)
            actions += [self._turn_record(turn, now) for turn in self.turns.due(self._input_ms)]
        if not self.carries_media:
            actions += self._reflected_tick(now)
        actions += self._decide_pause(now) + self._check_after_playout(now) + self._tool_filler(now)
        if (name := self.ledger.due(now)) is not None:
            actions.append(ToTwilio(tw.SendMark(name)))
        return actions

    def _reflected_tick(self, now: float) -> list[Action]:
        """Live SIP: the agent falls silent when the session clock passes its last reflected audio,
        and a turn closes after its gap on that clock."""
        if self._agent_audible and self.reflected.last_end_ms is not None and not self.reflected.playing(now):
            self._agent_audible = False
        position = self.reflected.session_ms(now)
        if position is None:
            return []
        return [self._turn_record(turn, now) for turn in self.turns.due(position)]

    def _flush_dtmf(self, now: float) -> list[Action]:
        if not self._dtmf or now - self._dtmf_last < DTMF_GAP_S:
            return []
        digits = "".join(self._dtmf)
        self._dtmf.clear()
        if not self.realtime_open:
            return []
        actions: list[Action] = [
            ToRealtime(rt.AddUserText(f"The caller pressed {digits} on the keypad.")),
            Record("dtmf", {"digits": digits})]
        if self._response is None and self._pause is None:
            actions.append(self._create_response())
        return actions

    # --- Ending ---

    def on_hung_up(self, reason: str, abnormal: bool = False) -> list[Action]:
        """We hung the call up ourselves (a call without media: after end_call, or unsteerable)."""
        return self._end(reason, abnormal)

    def on_handing_over(self) -> list[Action]:
        """The call is being moved to a new stream (a deploy): until Twilio answers the update, an
        end of this stream is held, since Twilio stops it as it acts on the update, often before
        its REST answer arrives; ``on_handoff_result`` then says how it really ended."""
        self._handing_over = True
        return []

    def on_handoff_result(self, moved: bool, conversation_items: int) -> list[Action]:
        """Twilio's answer to the handoff: ``moved``, the record ends "handed over" (the call goes on
        elsewhere, and is counted there); not moved, as it would have without the handoff."""
        self._handing_over = False
        held, self._held_end = self._held_end, None
        if moved:
            turns: list[Action] = [] if self.ended else [
                self._turn_record(turn, self._last_heard or self._started_at) for turn in self.turns.flush()]
            self.ended = True
            return turns + [Record("handed_over", {"conversation_items": conversation_items}),
                            Record("end", {"reason": "handed over", "abnormal": False, "handed_over": True})]
        if held is not None:
            reason, abnormal = held
            return [Record("end", {"reason": reason, "abnormal": abnormal})]
        return []

    def end(self, reason: str) -> list[Action]:
        """Ends the call from outside (shutdown): Twilio then speaks the fallback."""
        log.info("call %s: ending: %s", self.call_sid, reason)
        return self._end(reason, abnormal=True)

    def _end(self, reason: str, abnormal: bool = False) -> list[Action]:
        if self.ended:
            return []
        self.ended = True
        turns: list[Action] = [self._turn_record(turn, self._last_heard or self._started_at)
                               for turn in self.turns.flush()]
        if self._handing_over:  # how it ended is known once Twilio answers the handoff
            self._held_end = (reason, abnormal)
            return turns + [EndStream(reason, abnormal)]
        return turns + [Record("end", {"reason": reason, "abnormal": abnormal}), EndStream(reason, abnormal)]

    def _note_agent_item(self, item_id: str) -> None:
        if ("assistant", item_id) not in self._history:
            self._history.append(("assistant", item_id))

    def agent_transcript(self, item_id: str) -> str:
        return "".join(self._transcripts.get(item_id, []))


def _builtin_outcome(name: str, failed: bool, profile: Profile) -> str:
    if name not in tools.REGISTRY or name not in profile.tool_names:
        return "unknown_tool"
    return "error" if failed else "ok"
