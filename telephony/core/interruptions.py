"""What the call does when the caller speaks over the agent (beta and GA, with truncate).

``core.barge_in`` decides (the policy: length, backchannels, the transcript's timeout); this
carries it out. At the caller's first sound the agent is paused: Twilio is told to ``clear`` and
the playout ledger hands back exactly what the caller had not heard. Then either:

- **stop** (a real interruption): cancel the response, truncate each agent item at what was
  heard (delete one heard not at all), and answer the caller's turn once it is committed and
  the cancelled response is done;
- **resume** (a backchannel, a noise): play the held audio from where the caller stopped hearing
  it, then what the model sent meanwhile; the model is told nothing.

A mixin of ``core.call.Call``: it works on the call's own state.
"""

from __future__ import annotations

import logging

from telephony.core.actions import Action, Record, ToRealtime, ToTwilio
from telephony.core.audio import ModelAudio
from telephony.core.barge_in import RESUME, STOP, ItemEnd, Pause
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

log = logging.getLogger("telephony.call")


class Interruptions:
    """Pause at the caller's first sound, then stop or resume."""

    def _on_speech_started(self, event: rt.SpeechStarted, now: float) -> list[Action]:
        if self._pause is not None:
            self._pause.new_burst(event.item_id, now)
            return self._decide_pause(now)
        if not self.ledger.unplayed and self._response is None:
            return []  # the agent is silent: an ordinary turn, answered when it is committed
        return self._pause_agent(event, now)

    def _pause_agent(self, event: rt.SpeechStarted, now: float) -> list[Action]:
        """The caller stops hearing the agent now; what they had not heard yet is kept, in order."""
        playing = self.ledger.unplayed_items()
        heard = {item: min(self.ledger.heard_ms(item, now), self.ledger.sent_ms(item)) for item in playing}
        self._pause = Pause(now, now, event.item_id, heard, list(self.ledger.take_unheard(now)))
        actions: list[Action] = [ToTwilio(tw.SendClear())] if playing else []
        first = playing[0] if playing else (next(iter(self._response.items), None) if self._response else None)
        heard_first = None if first is None else round(heard.get(first, self.ledger.heard_ms(first, now)))
        actions.append(Record("barge_in", {"item_id": first, "heard_ms": heard_first}))
        return actions + self._decide_pause(now)

    def _decide_pause(self, now: float) -> list[Action]:
        pause = self._pause
        if pause is None:
            return []
        decision = pause.decide(self.barge_in, now, transcribing=bool(self.profile.transcription_model),
                                silence_s=self._vad_silence_s())
        if decision is None:
            return []
        self._pause = None
        log.info("call %s: caller spoke over the agent for %.0f ms: %s", self.call_sid,
                 ((pause.stopped_at or now) - pause.speech_at) * 1000, decision)
        return self._stop_agent(pause, now) if decision == STOP else self._resume_agent(pause, now)

    def _vad_silence_s(self) -> float:
        """The quiet the server's VAD waits for before it says the caller stopped."""
        return self.profile.turn_detection.silence_duration_ms / 1000

    def _stop_agent(self, pause: Pause, now: float) -> list[Action]:
        """A real interruption: the answer ends at what was heard. Every agent item the caller was
        still to hear is truncated there, or deleted if they heard none of it (the server refuses
        to truncate audio it never played, and a whole unheard item would tell the model the
        caller heard it). The caller's turn is answered once it is committed."""
        actions: list[Action] = []
        items = pause.items()
        if self._response is not None:
            actions.append(ToRealtime(rt.CancelResponse()))
            self._dropped_responses.add(self._response.id)
            self._cancelling = self._response.id
            items += [item for item in self._response.items if item not in items]
            self._response = None
        for item in items:
            heard = round(pause.heard.get(item, self.ledger.heard_ms(item, now)))
            actions.append(ToRealtime(rt.TruncateItem(item, heard) if heard > 0 else rt.DeleteItem(item)))
            self._dropped_items.add(item)
            self._cut_transcript(item, heard, self.ledger.sent_ms(item) + pause.held_ms(item))
            actions.append(self._transcript("agent", item, self.agent_transcript(item), now,
                                            interrupted=True, heard_ms=heard))
        self.codec.interrupted()
        actions.append(Record("interruption", pause.record(STOP, now)))
        if pause.committed:
            actions += self._answer_turn()
        return actions

    def _resume_agent(self, pause: Pause, now: float) -> list[Action]:
        """A backchannel or a noise: the caller hears the rest from where they stopped hearing it,
        then what the model sent meanwhile. The model is told nothing: its answer stays whole."""
        actions: list[Action] = []
        for piece in pause.held:
            if isinstance(piece, ItemEnd):
                if (name := self.ledger.seal()) is not None:
                    actions.append(ToTwilio(tw.SendMark(name)))
            else:
                actions += self._send_agent_audio(piece.item_id, ModelAudio(piece.payload, piece.ms), now)
        self._resumed_items.update(pause.items())
        actions += [self._transcript("agent", item, text, now, resumed=True)
                    for item, text in pause.transcripts_done.items()]
        actions.append(Record("interruption", pause.record(RESUME, now)))
        if self._respond_when_done and not self._agent_busy():
            self._respond_when_done = False
            actions.append(self._create_response())
        return actions + self._check_after_playout(now)

    def _on_turn_committed(self, event: rt.TurnCommitted, now: float) -> list[Action]:
        """The server no longer answers by itself (``create_response: false``): the bridge asks,
        at once when the agent is silent, after the decision when the turn paused it."""
        if self.pacer is not None:
            return []
        if self._pause is not None:
            if self._pause.speech_item == event.item_id:
                self._pause.committed = True
            return self._decide_pause(now)
        return self._answer_turn()

    def _answer_turn(self) -> list[Action]:
        if self._agent_busy():
            self._respond_when_done = True  # a tool's answer is under way: the turn's comes next
            return []
        self._respond_when_done = False
        return [self._create_response()]

    def _cut_transcript(self, item_id: str, heard_ms: int, sent: float) -> None:
        """Keeps the share of the agent's text that matches the share of its audio heard."""
        parts = self._transcripts.get(item_id)
        if parts and sent > 0:
            text = "".join(parts)
            cut = round(len(text) * heard_ms / sent)
            if cut < len(text) and not text[cut].isspace():
                cut = text.rfind(" ", 0, cut) + 1  # a word cut short was not really said
            self._transcripts[item_id] = [text[:cut]]
