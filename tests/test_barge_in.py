"""Barge-in that holds on a phone line: the core pauses the agent at the caller's first sound,
then resumes it from exactly what was heard (a backchannel, a noise) or stops it (a real
interruption). Driven message by message with a fake clock; μ-law passthrough, so the bytes the
caller hears can be compared with the bytes the model sent."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from helpers import validate_event
from test_call import realtime, twilio

from telephony.core.actions import Record
from telephony.core.barge_in import BargeInError, BargeInPolicy, parse_settings
from telephony.core.call import Call
from telephony.core.profile import ProfileError, load_profile
from telephony.wire import realtime as rt
from telephony.wire import realtime_beta, realtime_ga
from telephony.wire import twilio as tw

CHUNK_MS = 100  # each model delta: 100 ms of μ-law, 800 bytes


def model_audio(n_chunks: int, offset: int = 0) -> list[bytes]:
    """Distinct bytes per sample position (a counter), so a skip or a repeat cannot hide."""
    return [bytes((offset + k * 800 + i) % 251 for i in range(800)) for k in range(n_chunks)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Line:
    """One call with μ-law passthrough, and a Twilio that plays what it is sent at real time,
    echoes each mark as playback passes it, and drops its buffer on a clear: ``heard`` is what
    the caller heard."""

    def __init__(self, profile, **policy) -> None:
        if policy:
            profile = replace(profile, barge_in=BargeInPolicy(**policy))
        self.call = Call(profile, "g711_ulaw")
        self.call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
        self.call.on_realtime_open(0.0)
        self.queue = bytearray()  # sent to Twilio, not played yet (from ``played`` on)
        self.played = 0  # bytes of the queue played
        self.playing_since = 0.0
        self.marks: list[tuple[str, int]] = []  # (name, queue position it follows)
        self.heard = bytearray()
        self.actions: list = []

    def feed(self, actions, now: float) -> list:
        self.actions += actions
        for message in twilio(actions):
            if isinstance(message, tw.SendMedia):
                self.play(now)
                if self.played == len(self.queue):  # an empty buffer plays what comes at once
                    self.playing_since, self.played = now, 0
                    self.queue.clear()
                self.queue += base64.b64decode(message.payload)
            elif isinstance(message, tw.SendMark):
                self.marks.append((message.name, len(self.queue)))
            elif isinstance(message, tw.SendClear):
                self.play(now)
                self.queue.clear()
                self.played = 0
                self.marks.clear()  # (echoed at once; the core knows them for what they are)
        return actions

    def play(self, now: float) -> None:
        """Twilio plays up to ``now`` and echoes the marks it passes."""
        self.played_to(min(len(self.queue), round((now - self.playing_since) * 8000)))
        while self.marks and self.marks[0][1] <= self.played:
            name, position = self.marks.pop(0)
            passed_at = self.playing_since + position / 8000  # echoed as playback passes it
            self.feed(self.call.on_twilio(tw.Mark(name), passed_at), passed_at)

    def played_to(self, position: int) -> None:
        if position > self.played:
            self.heard += self.queue[self.played:position]
            self.played = position

    def realtime_event(self, event, now: float) -> list:
        self.play(now)
        return self.feed(self.call.on_realtime(event, now), now)

    def tick(self, now: float) -> list:
        self.play(now)
        return self.feed(self.call.on_tick(now), now)

    def speak(self, response: str, item: str, chunks: list[bytes], now: float) -> None:
        self.realtime_event(rt.ResponseCreated(response), now)
        for chunk in chunks:
            self.realtime_event(rt.AudioDelta(response, item, b64(chunk)), now)

    def realtime(self, actions=None, kind=None):
        return realtime(self.actions if actions is None else actions, kind)

    def records(self, kind: str) -> list[dict]:
        return [a.data for a in self.actions if isinstance(a, Record) and a.kind == kind]

    def play_out(self) -> bytes:
        self.played_to(len(self.queue))
        return bytes(self.heard)


@pytest.fixture
def line(profile):
    return Line(profile)


def test_a_backchannel_pauses_then_resumes_from_exactly_what_was_heard(line):
    audio = model_audio(10)  # a 1 s answer, all sent to Twilio at t=1.0
    line.speak("r1", "i1", audio, 1.0)
    pause = line.realtime_event(rt.SpeechStarted("u1", 0), 1.337)
    assert twilio(pause) == [tw.SendClear()]  # the caller stops hearing the agent at once
    assert line.realtime(pause) == []  # nothing to the model yet: no truncate, no cancel
    line.realtime_event(rt.SpeechStopped("u1", 0), 1.6)
    line.realtime_event(rt.TurnCommitted("u1"), 1.6)
    resumed = line.realtime_event(rt.InputTranscript("u1", "Mm-hmm."), 1.9)
    assert line.play_out() == b"".join(audio)  # nothing skipped, nothing repeated
    assert line.realtime() == []  # the model's answer stays whole: no truncate, cancel or new response
    assert twilio(resumed, tw.SendMark)  # what "was heard" still comes from Twilio's marks
    (decision,) = line.records("interruption")
    assert decision["decision"] == "resumed" and decision["transcript"] == "Mm-hmm."
    assert decision["paused_ms"] == 563 and decision["heard_ms"] == {"i1": 337}


def test_audio_the_model_sent_during_the_pause_plays_after_what_was_held(line):
    first, later = model_audio(5), model_audio(5, offset=4000)
    line.speak("r1", "i1", first, 0.0)
    line.realtime_event(rt.SpeechStarted("u1", 0), 0.2)
    for chunk in later:  # the answer goes on while the caller is heard
        assert twilio(line.realtime_event(rt.AudioDelta("r1", "i1", b64(chunk)), 0.3)) == []
    line.realtime_event(rt.AudioDone("r1", "i1"), 0.3)
    line.realtime_event(rt.SpeechStopped("u1", 0), 0.5)
    line.realtime_event(rt.InputTranscript("u1", ""), 0.6)  # a cough: no words
    assert line.play_out() == b"".join(first + later)
    assert line.records("interruption")[0]["decision"] == "resumed"


def test_a_noise_with_no_transcript_at_all_resumes_after_the_timeout(line):
    line.speak("r1", "i1", model_audio(10), 0.0)
    line.realtime_event(rt.SpeechStarted("u1", 0), 0.3)
    # The VAD says so after its 500 ms of silence: the sound itself ended at 0.4.
    line.realtime_event(rt.SpeechStopped("u1", 0), 0.9)
    assert twilio(line.tick(0.4 + 1.19)) == []  # still waiting for words
    resumed = line.tick(0.4 + 1.2)
    assert twilio(resumed, tw.SendMedia) and line.realtime() == []
    assert line.records("interruption")[0]["decision"] == "resumed"


def test_one_word_that_is_not_a_backchannel_stops_the_agent_and_is_answered(line):
    line.speak("r1", "i1", model_audio(10), 0.0)
    line.tick(0.1)
    line.realtime_event(rt.SpeechStarted("u1", 0), 0.25)
    line.realtime_event(rt.SpeechStopped("u1", 0), 0.6)
    committed = line.realtime_event(rt.TurnCommitted("u1"), 0.6)
    assert line.realtime(committed) == []  # not answered before the decision
    stop = line.realtime_event(rt.InputTranscript("u1", "Stop."), 0.7)
    # Cancel, truncate at what was heard; the caller's turn is answered once the cancel is done
    # (a response.create before then is refused: the conversation still has an active response).
    assert line.realtime(stop) == [rt.CancelResponse(), rt.TruncateItem("i1", 250)]
    assert twilio(stop) == []  # no more of the answer
    assert twilio(line.realtime_event(rt.AudioDelta("r1", "i1", b64(b"\x01" * 800)), 0.8)) == []
    answer = line.realtime_event(rt.ResponseDone("r1", "cancelled"), 0.85)
    assert line.realtime(answer) == [rt.CreateResponse()]
    assert line.records("interruption")[0]["decision"] == "stopped"


def test_speech_longer_than_min_interruption_ms_stops_the_agent_while_the_caller_still_talks(line):
    line.speak("r1", "i1", model_audio(30), 0.0)
    line.realtime_event(rt.SpeechStarted("u1", 0), 1.0)
    # Not said to have stopped 800 ms + the VAD's 500 ms of silence after it began: it lasted 800 ms.
    assert line.realtime(line.tick(2.29)) == []
    stop = line.tick(2.3)
    assert line.realtime(stop) == [rt.CancelResponse(), rt.TruncateItem("i1", 1000)]
    line.realtime_event(rt.ResponseDone("r1", "cancelled"), 2.35)
    # The turn is answered once it is committed, at once.
    assert line.realtime(line.realtime_event(rt.TurnCommitted("u1"), 2.5)) == [rt.CreateResponse()]


def test_the_server_cancelling_its_own_answer_confirms_the_interruption(line):
    line.speak("r1", "i1", model_audio(10), 0.0)
    line.realtime_event(rt.SpeechStarted("u1", 0), 0.3)
    stop = line.realtime_event(rt.ResponseDone("r1", "cancelled"), 0.35)
    assert line.realtime(stop) == [rt.TruncateItem("i1", 300)]
    assert line.records("interruption")[0]["decision"] == "stopped"


def test_an_item_the_caller_heard_none_of_is_deleted_not_truncated_at_zero(line):
    line.speak("r1", "A1", model_audio(3), 0.0)
    line.realtime_event(rt.AudioDone("r1", "A1"), 0.0)
    line.speak("r2", "B1", model_audio(3), 0.01)  # queued behind A1, not begun
    line.realtime_event(rt.SpeechStarted("u1", 0), 0.1)
    stop = line.tick(1.4)
    assert line.realtime(stop) == [rt.CancelResponse(), rt.TruncateItem("A1", 100), rt.DeleteItem("B1")]


def test_a_turn_while_the_agent_is_silent_is_answered_on_its_commit(line):
    assert line.realtime_event(rt.SpeechStarted("u1", 0), 1.0) == []  # not a barge-in
    line.call.on_realtime(rt.ResponseCreated("r0"), 0.0)  # (the greeting's response, done)
    line.call.on_realtime(rt.ResponseDone("r0", "completed"), 0.0)
    line.realtime_event(rt.SpeechStopped("u1", 0), 1.5)
    assert line.realtime(line.call.on_realtime(rt.TurnCommitted("u1"), 1.5)) == [rt.CreateResponse()]


def test_without_resume_every_caller_sound_stops_the_agent_at_once(profile):
    line = Line(profile, resume_false_interruptions=False)
    line.speak("r1", "i1", model_audio(10), 0.0)
    stop = line.realtime_event(rt.SpeechStarted("u1", 0), 0.3)
    assert twilio(stop) == [tw.SendClear()]
    assert line.realtime(stop) == [rt.CancelResponse(), rt.TruncateItem("i1", 300)]


def test_the_feed_marks_a_resumed_answer_whole_and_a_stopped_one_cut(line):
    line.speak("r1", "i1", model_audio(10), 0.0)
    line.realtime_event(rt.TranscriptDelta("r1", "i1", "one two three four"), 0.0)
    line.realtime_event(rt.SpeechStarted("u1", 0), 0.5)
    # The answer's transcript completes during the pause: recorded once the pause is decided.
    assert line.realtime_event(rt.TranscriptDone("r1", "i1", "one two three four"), 0.55) == []
    line.realtime_event(rt.SpeechStopped("u1", 0), 0.8)
    line.realtime_event(rt.InputTranscript("u1", "uh huh"), 0.9)
    agent = [t for t in line.records("transcript") if t["speaker"] == "agent"]
    assert agent == [{"speaker": "agent", "item_id": "i1", "text": "one two three four", "at": 0.9,
                      "resumed": True}]


def test_a_second_burst_is_judged_from_its_own_start(line):
    line.speak("r1", "i1", model_audio(30), 0.0)
    line.realtime_event(rt.SpeechStarted("u1", 0), 0.5)
    line.realtime_event(rt.SpeechStopped("u1", 0), 0.7)
    line.realtime_event(rt.SpeechStarted("u2", 0), 0.9)  # "mm… hmm"
    assert line.realtime(line.tick(1.6)) == []  # 1.1 s since the first, 0.7 since this
    line.realtime_event(rt.SpeechStopped("u2", 0), 1.1)
    line.realtime_event(rt.InputTranscript("u2", "hmm"), 1.2)
    assert line.records("interruption")[0]["decision"] == "resumed"


def test_per_call_settings_override_the_profile(profile):
    line = Line(profile)
    line.call.parameters["barge_in"] = json.dumps({"min_interruption_ms": 300, "backchannels": ["d'accord"]})
    line.speak("r1", "i1", model_audio(30), 0.0)
    line.realtime_event(rt.SpeechStarted("u1", 0), 0.5)
    assert line.realtime(line.tick(1.29)) == []  # 300 ms, plus the VAD's 500 ms of silence
    assert line.realtime(line.tick(1.3)) == [rt.CancelResponse(), rt.TruncateItem("i1", 500)]
    assert line.call.barge_in.is_backchannel("D'accord.")


# --- The session: the server neither answers by itself nor stops its answer ---


@pytest.mark.parametrize("dialect", [realtime_beta, realtime_ga])
def test_the_media_session_leaves_answers_and_interruptions_to_the_bridge(profile, dialect):
    call = Call(profile, "pcm16")
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    (update,) = realtime(call.on_realtime_open(0.0), rt.ConfigureSession)
    event = dialect.encode(update)
    td = event["session"]["turn_detection"] if dialect is realtime_beta else \
        event["session"]["audio"]["input"]["turn_detection"]
    assert td["create_response"] is False and td["interrupt_response"] is False
    validate_event(event, "beta" if dialect is realtime_beta else "ga")
    delete = dialect.encode(rt.DeleteItem("item_1"))
    assert delete == {"type": "conversation.item.delete", "item_id": "item_1"}
    validate_event(delete, "beta" if dialect is realtime_beta else "ga")


def test_a_sip_session_keeps_the_servers_own_turns(profile):
    """Without media through us, the SIP side plays the agent and stops it itself."""
    call = Call(profile, carries_media=False)
    td = call.session_config().turn_detection
    assert td.create_response is True and td.interrupt_response is True


# --- The policy ---


@pytest.mark.parametrize("text", ["Mm-hmm.", "mm hmm", "Uh-huh, yeah.", "Hmmmm", "OK!", "yes right", "mhm",
                                  "M-M-M.", "Hm.", "Yep.", "yup"])
def test_backchannels(text):
    assert BargeInPolicy().is_backchannel(text)


@pytest.mark.parametrize("text", ["Stop.", "wait", "yeah but no", "okay so what about tomorrow", "Moment",
                                  "and momentum.", "Hmm, no."])
def test_not_backchannels(text):
    assert not BargeInPolicy().is_backchannel(text)


def test_a_profile_adds_its_own_backchannels_in_any_language(tmp_path):
    path = tmp_path / "de.toml"
    path.write_text('[agent]\ninstructions = "x"\n[barge_in]\nbackchannels = ["genau", "ja ja", "сейчас"]\n'
                    "min_interruption_ms = 600\n", encoding="utf-8")
    policy = load_profile(path).barge_in
    assert policy.min_interruption_ms == 600 and policy.resume_false_interruptions
    assert policy.is_backchannel("Ja, genau.") and policy.is_backchannel("Сейчас")
    assert policy.is_backchannel("mm-hmm")  # the built-in list still holds


@pytest.mark.parametrize("table,problem", [
    ({"min_interruption_ms": "800"}, "min_interruption_ms"),
    ({"min_interruption_ms": 0}, "min_interruption_ms"),
    ({"false_interruption_timeout_ms": 60_000}, "false_interruption_timeout_ms"),
    ({"resume_false_interruptions": "yes"}, "resume_false_interruptions"),
    ({"backchannels": "mm-hmm"}, "backchannels"),
    ({"backchannels": ["..."]}, "backchannels"),
    ({"min_interuption_ms": 800}, "unknown keys"),
])
def test_bad_settings_are_refused_with_the_key_named(table, problem, tmp_path):
    with pytest.raises(BargeInError, match=problem):
        parse_settings(table, "[barge_in]")
    path = tmp_path / "p.toml"
    path.write_text('[agent]\ninstructions = "x"\n[barge_in]\n' + "\n".join(
        f"{k} = {json.dumps(v)}" for k, v in table.items()) + "\n", encoding="utf-8")
    with pytest.raises(ProfileError, match=f"{path}: \\[barge_in\\].*{problem}"):
        load_profile(path)
