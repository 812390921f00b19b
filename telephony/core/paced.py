"""The call's agent audio where the dialect cannot truncate (GPT-Live over a media stream).

The server cannot be told what the caller heard, so the bridge never lets it run ahead: agent
audio is paced to real time (``core.pacing``), our own VAD hears the caller on every frame
(``core.vad``), and a caller who talks over the agent drops what is held and what Twilio queued.
The server stops its own output when it hears the caller, so the model is told nothing. Caller
and agent transcripts come with timestamps and are grouped into turns (``core.turns``).

A mixin of ``core.call.Call``: it works on the call's own state.
"""

from __future__ import annotations

import logging
from typing import Any

from telephony.core.actions import Action, Record, ToTwilio
from telephony.core.audio import ModelAudio
from telephony.core.turns import Turn
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

log = logging.getLogger("telephony.call")

# Agent audio arriving while the caller talks over the agent is the interrupted utterance's
# tail: dropped until the caller stops, but never longer than this.
MUTE_AFTER_BARGE_IN_S = 3.0


class PacedAgent:
    """Barge-in without truncate: pacing, our own VAD, the server's own interruptions."""

    def _pace(self, item_id: str, chunk: ModelAudio, now: float) -> list[Action]:
        if self._muted_until is not None and now < self._muted_until:
            return []  # the tail of the utterance the caller is talking over
        if not self.pacer.queued(now):
            self._agent_from_ms = self._input_ms
        self._agent_active_at = now
        self.pacer.hold(item_id, chunk)
        return self._release(now)

    def _release(self, now: float) -> list[Action]:
        return [action for item, piece in self.pacer.release(now)
                for action in self._send_agent_audio(item, piece, now)]

    def _listen(self, payload: str, now: float) -> list[Action]:
        """Our VAD on the caller's frame: speech starting over queued agent audio is a barge-in."""
        change = self.vad.feed(payload)
        if change is False:
            self._muted_until = None
        elif change is True and (self.pacer.queued(now) or self.ledger.unplayed):
            self._muted_until = now + MUTE_AFTER_BARGE_IN_S
            return self._interrupt_agent("caller_speech", now)
        return []

    def _interrupt_agent(self, cause: str, now: float) -> list[Action]:
        """Drops the held agent audio and what Twilio has queued; the model is not told."""
        dropped_ms = self.pacer.drop()
        actions: list[Action] = []
        if self.ledger.unplayed:
            actions.append(ToTwilio(tw.SendClear()))
            self.ledger.clear()
            self.codec.interrupted()
        self.turns.interrupt("agent")
        log.info("call %s: caller talked over the agent (%s); %.0f ms of held audio dropped",
                 self.call_sid, cause, dropped_ms)
        actions.append(Record("barge_in", {"cause": cause, "dropped_ms": round(dropped_ms)}))
        return actions

    def _on_timed_transcript(self, event: rt.TimedTranscript, now: float) -> list[Action]:
        actions: list[Action] = []
        # The caller heard speaking after the agent's queued audio began: the server stops its
        # output for that itself, so what we still hold or Twilio still plays is stale.
        if (event.speaker == "caller" and self.pacer is not None and event.end_ms > self._agent_from_ms
                and self.pacer.queued(now)):
            actions.extend(self._interrupt_agent("server_heard_caller", now))
        closed = self.turns.add(event.speaker, event.delta, event.start_ms, event.end_ms)
        return actions + [self._turn_record(turn, now) for turn in closed]

    def _turn_record(self, turn: Turn, now: float) -> Record:
        self._turns_said.append(turn)
        extra: dict[str, Any] = {"start_ms": turn.start_ms, "end_ms": turn.end_ms}
        if turn.interrupted:
            extra["interrupted"] = True
        return self._transcript(turn.speaker, f"{turn.speaker}_{turn.start_ms}", turn.text, now, **extra)
