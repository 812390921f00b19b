"""One call's history, as it happens: the core's records (and when agent audio first went out)
turned into rows for the writer. Created per call stream by the shell; holds only its call.

Times: the records carry the bridge's loop clock (monotonic); rows carry wall-clock instants
(UTC), so a call handed from one instance to another keeps one timeline.

Latency of an agent turn: from the caller's end of speech (the model's ``speech_stopped``) to the
first agent audio sent to the caller; ``model_ms`` is until that audio arrived from the model,
``bridge_ms`` the rest (this service). Only where the records allow: dialects that report the
end of speech, routes whose audio passes through us.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Callable

from telephony.history.models import SID
from telephony.history.writer import CallUpsert, EventRow, HistoryWriter, TurnRow, TurnUpdate

# Records that are not events of the call: its frame (start, end), its turns, the latency clock,
# and per-response bookkeeping too frequent to be worth a row.
_NOT_EVENTS = frozenset({"start", "end", "transcript", "speech_stopped", "response_done", "usage", "refused"})
# Events that re-arm "the agent's next turn starts with the next audio sent".
_AGENT_MAY_SPEAK = frozenset({"tool_call", "dtmf", "answered_by", "interruption"})
# What after the agent's last words were heard: the transfer (OpenAI's SIP route then records
# "transferred" with its target, once the REFER is accepted) or the hang-up.
_RENAMED = {("after_playout", "Transfer"): "transfer", ("after_playout", "HangUp"): "hang_up"}
DATA_LIMIT = 16_000  # characters of an event's JSON data; a bigger one keeps only its size
SPEECH_STOPS_KEPT = 16  # caller items whose end of speech is remembered until their transcript
AGENT_TURNS_KEPT = 16  # agent items whose turn may still be cut (queued at the caller's side)


def _cut(value: Any, limit: int) -> str | None:
    return None if value is None else str(value)[:limit]


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _remember(kept: dict[str, Any], key: str, value: Any, limit: int) -> None:
    """``kept[key] = value``, forgetting the oldest past ``limit`` (memory per call stays bounded)."""
    kept[key] = value
    while len(kept) > limit:
        del kept[next(iter(kept))]


class CallHistory:
    def __init__(self, writer: HistoryWriter, route: str, dialect: str | None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.route = route
        self.dialect = dialect
        self.clock = clock
        self.wall = wall
        self.call_sid: str | None = None
        self.stream_sid = ""
        self._base: dict[str, Any] = {}  # the call row's required fields, for every upsert
        self._clock_at_start = 0.0
        self._wall_at_start = 0.0
        self._turns = 0
        self._events = 0
        self._ended = False
        self._closed = False
        self._speech_stopped: dict[str, float] = {}  # caller item → when its speech ended
        # Agent item → (its turn's seq, its first audio), while it may still be cut.
        self._agent_turns: dict[str, tuple[int, float | None]] = {}
        self._stopped_at: float | None = None  # caller's last end of speech, until agent audio
        self._latency: tuple[float, float, float] | None = None  # (total, model, bridge) s, for the next agent turn
        self._agent_from: float | None = None  # first agent audio of the turn under way
        # Read per media message by the observer: True while the next agent audio sent matters.
        self.awaiting_audio = False

    def _at(self, now: float) -> datetime:
        return datetime.fromtimestamp(self._wall_at_start + (now - self._clock_at_start), timezone.utc)

    # --- From the shell ---

    def start(self, call_sid: str, stream_sid: str | None, parameters: dict[str, str], profile: str | None) -> None:
        self.call_sid = call_sid[:SID]
        self.stream_sid = (stream_sid or "")[:SID]
        self._clock_at_start, self._wall_at_start = self.clock(), self.wall()
        started = self._at(self._clock_at_start)
        self._base = {"call_sid": self.call_sid, "route": self.route, "state": "live", "started_at": started}
        self.writer.submit(CallUpsert({
            **self._base, "stream_sid": self.stream_sid or None, "dialect": self.dialect,
            "direction": _cut(parameters.get("direction") or None, 32),
            "from_number": _cut(parameters.get("from") or None, 256),
            "to_number": _cut(parameters.get("to") or None, 256), "profile": _cut(profile, 128)},
            update=("stream_sid",)))  # a handed-over call keeps its first start, route and numbers
        self.awaiting_audio = True  # a greeting's first audio starts the agent's first turn

    def audio_sent(self, arrived: float, now: float) -> None:
        """Agent audio went to the caller (``arrived``: when it came from the model)."""
        self.awaiting_audio = False
        if self._agent_from is None:
            self._agent_from = now
        if self._stopped_at is not None:
            self._latency = (now - self._stopped_at, max(0.0, arrived - self._stopped_at), now - arrived)
            self._stopped_at = None

    def record(self, kind: str, data: dict[str, Any]) -> None:
        if self.call_sid is None or self._closed:
            return  # nothing before the start (a refused stream); after the end, only events
        # (the recording is finished, and recorded, once both sockets are closed)
        now = self.clock()
        if kind == "transcript":
            self._turn(data, now)
        elif kind == "speech_stopped":
            self._stopped_at = now
            self.awaiting_audio = True
            if item := data.get("item_id"):
                _remember(self._speech_stopped, item, now, SPEECH_STOPS_KEPT)
        elif kind == "end":
            if not self._ended:
                self._end(data, now)
        elif kind not in _NOT_EVENTS:
            self._event(kind, data, now)

    def close(self, reason: str = "stream closed without an end") -> None:
        """The stream is over: a call still open here ends (without the core's end record, abnormally)."""
        if self.call_sid is not None and not self._ended:
            self._end({"reason": reason, "abnormal": True}, self.clock())
        self._closed = True

    # --- Rows ---

    def _turn(self, data: dict[str, Any], now: float) -> None:
        speaker = str(data.get("speaker", ""))[:16]
        item = _cut(data.get("item_id"), SID)
        if speaker == "agent" and item in self._agent_turns:
            # Its transcript was recorded complete; the caller has now cut it: what they heard.
            seq, began = self._agent_turns.pop(item)
            self.writer.submit(TurnUpdate((self.call_sid, self.stream_sid, seq), {
                "text": str(data.get("text", "")), "interrupted": bool(data.get("interrupted")),
                "resumed": bool(data.get("resumed")), "heard_ms": _int(data.get("heard_ms")),
                "ended_at": self._heard_until(began, data.get("heard_ms"), now)}))
            return
        self._turns += 1
        started = ended = None
        if data.get("start_ms") is not None:  # timed transcripts (Live): the session's timeline
            started = self._at(self._clock_at_start + data["start_ms"] / 1000)
            ended = self._at(self._clock_at_start + data["end_ms"] / 1000) if data.get("end_ms") is not None else None
        # Every key in every row: the writer inserts a batch's turns with one executemany.
        row: dict[str, Any] = {"interrupted": bool(data.get("interrupted")), "resumed": bool(data.get("resumed")),
                               "heard_ms": None, "latency_ms": None, "model_ms": None, "bridge_ms": None}
        if speaker == "agent":
            began, self._agent_from = self._agent_from, None
            if started is None and began is not None:
                # Its end is known only if the caller cut it; else when it finished playing, which
                # the records do not say.
                started = self._at(began)
                ended = self._heard_until(began, data.get("heard_ms"), now) if data.get("interrupted") else None
            if item and not data.get("interrupted"):
                _remember(self._agent_turns, item, (self._turns, began), AGENT_TURNS_KEPT)
            if self._latency is not None:
                total, model, bridge = self._latency
                row.update(latency_ms=round(total * 1000, 1), model_ms=round(model * 1000, 1),
                           bridge_ms=round(bridge * 1000, 1))
                self._latency = None
            row["heard_ms"] = _int(data.get("heard_ms"))
        elif started is None:
            stopped = self._speech_stopped.pop(str(data.get("item_id")), None)
            ended = self._at(stopped) if stopped is not None else None
        self.writer.submit(TurnRow({
            "call_sid": self.call_sid, "stream_sid": self.stream_sid, "seq": self._turns, "speaker": speaker,
            "item_id": item, "text": str(data.get("text", "")), "started_at": started, "ended_at": ended, **row}))

    def _heard_until(self, began: float | None, heard_ms: Any, now: float) -> datetime:
        """Where the caller stopped hearing a cut agent turn: its start plus what they heard of it
        (a pause decided later stopped it earlier); without those, now."""
        if began is None or heard_ms is None:
            return self._at(now)
        return self._at(min(now, began + int(heard_ms) / 1000))

    def _event(self, kind: str, data: dict[str, Any], now: float) -> None:
        renamed = _RENAMED.get((kind, data.get("action")))
        if renamed is not None:  # "after_playout" of a Transfer is the transfer
            kind, data = renamed, {k: v for k, v in data.items() if k != "action"}
        self._events += 1
        fields = {"name": _cut(data.get("name"), 128), "outcome": _cut(data.get("outcome"), 32),
                  "decision": _cut(data.get("decision"), 32), "latency_ms": data.get("latency_ms")}
        rest = {k: v for k, v in data.items() if k not in fields}
        text = json.dumps(rest, default=str)
        if len(text) > DATA_LIMIT:
            rest = {"truncated": True, "characters": len(text)}
        else:
            rest = json.loads(text)  # plain JSON types, whatever the record held
        self.writer.submit(EventRow({
            "call_sid": self.call_sid, "stream_sid": self.stream_sid, "seq": self._events, "kind": kind[:32],
            "at": self._at(now), **fields, "data": rest or None}))
        if kind == "interruption" and data.get("decision") == "resumed":
            # A backchannel or a noise paused the agent, and it went on: its turns say so (those
            # recorded before the pause; one completed during it is recorded resumed already).
            for item in data.get("heard_ms") or {}:
                if item in self._agent_turns:
                    self.writer.submit(TurnUpdate((self.call_sid, self.stream_sid, self._agent_turns[item][0]),
                                                  {"resumed": True}))
        if kind == "answered_by":
            self.writer.submit(CallUpsert({**self._base, "answered_by": _cut(data.get("answered_by"), 64)},
                                          update=("answered_by",)))
        if kind in _AGENT_MAY_SPEAK:
            self.awaiting_audio = True

    def _end(self, data: dict[str, Any], now: float) -> None:
        self._ended = True
        self.awaiting_audio = False
        if data.get("handed_over"):  # the call goes on in another stream: it is not over
            self.writer.submit(CallUpsert({**self._base, "handoffs": 1}, increment="handoffs"))
            return
        self.writer.submit(CallUpsert({
            **self._base, "state": "ended", "ended_at": self._at(now),
            "outcome": "abnormal" if data.get("abnormal") else "normal", "end_reason": _cut(data.get("reason"), 1000)},
            update=("state", "ended_at", "outcome", "end_reason")))
