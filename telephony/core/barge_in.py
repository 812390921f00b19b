"""Barge-in on a phone line: pause the agent at the caller's first sound, then resume or stop.

A caller's "mm-hmm", a cough or a door is not an interruption, but the server's VAD hears all of
them as speech. So the bridge does not stop the agent on ``speech_started``: it *pauses* it (the
caller stops hearing it at once; the unheard audio is kept) and decides from what follows:

- **stop** (a real interruption): the speech lasts ``min_interruption_ms``, or its transcript
  holds a word that is not a backchannel, or the server cancels the answer itself;
- **resume** (a false one): the speech ended sooner and its transcript is empty or only
  backchannels, or no transcript came within ``false_interruption_timeout_ms`` of its end.

This module is the policy and the pause's state; ``Call`` carries the decision out (the ledger
knows what was heard to the sample, so a resume skips and repeats nothing).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Union

from telephony.core.playout import Unheard

# Sounds and words that acknowledge without taking the turn. Multi-word and hyphenated forms are
# split into words: "mm-hmm", "mm hmm" and "uh huh yeah" are all backchannels.
# The list, and "yep"/"yup" (Whisper writes a clipped "yeah" so: seen in the benchmark).
BUILTIN_BACKCHANNELS = ("mm-hmm", "uh-huh", "mhm", "yeah", "yes", "yep", "yup", "right", "okay", "ok", "sure",
                        "uh", "um", "hmm")
DEFAULT_MIN_INTERRUPTION_MS = 800
DEFAULT_FALSE_INTERRUPTION_TIMEOUT_MS = 1200
MAX_MS = 10_000  # a setting past this is a typo (seconds for ms), not a choice
MAX_BACKCHANNELS = 50
_CLOCK_SLACK_S = 1e-6  # clock readings are floats: 2.3 - 1.0 is 1.2999999999999998

STOP, RESUME = "stopped", "resumed"  # the decisions, as records and metrics name them

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters in any script; "don't" is one word
_LONG_RUN = re.compile(r"(.)\1{2,}")  # "hmmmm" is "hmm", "mmm" is "mm"
_HUM = re.compile(r"[mh]+")  # "m", "hm", "mhm", "m-m-m": a closed-mouth hum, however it is spelled


class BargeInError(ValueError):
    """A ``[barge_in]`` setting (profile or per-call) that cannot be used; the text says which."""


def words(text: str) -> list[str]:
    """The words of ``text``, lower-case, long letter runs folded (a drawn-out "hmmm")."""
    return [_LONG_RUN.sub(r"\1\1", w) for w in _WORD.findall(text.lower().replace("-", " "))]


@dataclass(frozen=True)
class BargeInPolicy:
    """How a call tells a real interruption from a backchannel or a noise (profile ``[barge_in]``)."""

    resume_false_interruptions: bool = True  # False: every caller sound stops the agent (the old way)
    min_interruption_ms: int = DEFAULT_MIN_INTERRUPTION_MS
    false_interruption_timeout_ms: int = DEFAULT_FALSE_INTERRUPTION_TIMEOUT_MS
    backchannels: tuple[str, ...] = ()  # the profile's own, beside the built-in ones

    @cached_property
    def _backchannel_words(self) -> frozenset[str]:
        return frozenset(w for phrase in BUILTIN_BACKCHANNELS + self.backchannels for w in words(phrase))

    def is_backchannel(self, transcript: str) -> bool:
        """True when every word of ``transcript`` is a backchannel (an empty one is not speech)."""
        return all(w in self._backchannel_words or _HUM.fullmatch(w) for w in words(transcript))

    def with_overrides(self, overrides: dict[str, Any]) -> "BargeInPolicy":
        return replace(self, **parse_settings(overrides, "barge_in"))

    def overridden_by(self, parameter: str | None) -> "BargeInPolicy":
        """The policy with a call's ``barge_in`` stream parameter (JSON) applied; a parameter that
        cannot be read leaves the profile's policy (it was checked when the call was placed)."""
        if not parameter:
            return self
        try:
            data = json.loads(parameter)
            return self.with_overrides(data if isinstance(data, dict) else {})
        except (ValueError, BargeInError):
            return self


def parse_settings(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Checks ``[barge_in]`` keys (a profile's table or a ``POST /calls`` body's object)."""
    known = {"resume_false_interruptions", "min_interruption_ms", "false_interruption_timeout_ms", "backchannels"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise BargeInError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    settings: dict[str, Any] = {}
    if "resume_false_interruptions" in table:
        if not isinstance(table["resume_false_interruptions"], bool):
            raise BargeInError(f"{where}: resume_false_interruptions must be true or false")
        settings["resume_false_interruptions"] = table["resume_false_interruptions"]
    for key in ("min_interruption_ms", "false_interruption_timeout_ms"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_MS:
                raise BargeInError(f"{where}: {key} must be a whole number of milliseconds, 1 to {MAX_MS}")
            settings[key] = value
    if "backchannels" in table:
        phrases = table["backchannels"]
        if (not isinstance(phrases, list) or len(phrases) > MAX_BACKCHANNELS
                or not all(isinstance(p, str) and words(p) and len(p) <= 40 for p in phrases)):
            raise BargeInError(f"{where}: backchannels must be a list of at most {MAX_BACKCHANNELS} "
                               "short phrases, each with at least one word")
        settings["backchannels"] = tuple(phrases)
    return settings


@dataclass(frozen=True)
class ItemEnd:
    """Held with the audio: the model finished this item (its last mark goes out after it)."""

    item_id: str


Held = Union[Unheard, ItemEnd]


@dataclass
class Pause:
    """The agent paused by caller speech, until ``decide`` says stop or resume."""

    paused_at: float  # the agent went quiet (the first speech_started)
    speech_at: float  # the latest burst of caller speech began
    speech_item: str  # its conversation item: its commit and transcript carry this id
    heard: dict[str, float]  # agent item → ms the caller had heard when the pause began
    held: list[Held] = field(default_factory=list)  # unheard audio, then what came during the pause
    stopped_at: float | None = None  # the burst ended: speech_stopped, less the VAD's silence
    transcript: str | None = None  # the burst's transcript, once it came
    committed: bool = False  # the burst is a committed turn (answer it if this is an interruption)
    server_cancelled: bool = False  # the server stopped its answer itself: nothing left to resume
    transcripts_done: dict[str, str] = field(default_factory=dict)  # agent items finished meanwhile

    def new_burst(self, item_id: str, now: float) -> None:
        """More speech before a decision: it is judged by itself, from its own start."""
        self.speech_at, self.speech_item = now, item_id
        self.stopped_at, self.transcript, self.committed = None, None, False

    def stopped(self, now: float, silence_s: float) -> None:
        """speech_stopped came: the VAD says so only after ``silence_s`` of quiet (the session's
        silence_duration_ms), so the speech itself ended that much earlier."""
        self.stopped_at = max(self.speech_at, now - silence_s)

    def decide(self, policy: BargeInPolicy, now: float, transcribing: bool, silence_s: float) -> str | None:
        """STOP, RESUME, or None (not yet). ``transcribing``: a transcript will come for the burst;
        without one only its length can tell (the README says to keep transcription on).
        ``silence_s``: the VAD's silence before speech_stopped, so speech that has not been said to
        stop ``min_interruption_ms + silence_s`` after it started has lasted ``min_interruption_ms``."""
        if not policy.resume_false_interruptions or self.server_cancelled:
            return STOP
        if self.transcript and not policy.is_backchannel(self.transcript):
            return STOP
        min_s = policy.min_interruption_ms / 1000
        if self.stopped_at is None:
            return STOP if now - self.speech_at >= min_s + silence_s - _CLOCK_SLACK_S else None
        if self.stopped_at - self.speech_at >= min_s - _CLOCK_SLACK_S:
            return STOP
        if self.transcript is not None or not transcribing:
            return RESUME  # short, and empty or only backchannels
        if now - self.stopped_at >= policy.false_interruption_timeout_ms / 1000 - _CLOCK_SLACK_S:
            return RESUME  # short, and no transcript came: a noise the recognizer had no words for
        return None

    def held_ms(self, item_id: str) -> float:
        return sum(h.ms for h in self.held if isinstance(h, Unheard) and h.item_id == item_id)

    def items(self) -> list[str]:
        """The agent items this pause touches, in play order."""
        return list(dict.fromkeys([*self.heard, *(h.item_id for h in self.held)]))

    def record(self, decision: str, now: float) -> dict[str, Any]:
        return {"decision": decision, "paused_ms": round((now - self.paused_at) * 1000),
                "speech_ms": round(((self.stopped_at or now) - self.speech_at) * 1000),
                "transcript": self.transcript, "item_id": self.speech_item,
                "heard_ms": {item: round(ms) for item, ms in self.heard.items()}}
