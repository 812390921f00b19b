"""The call core driven message by message with a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import base64
from dataclasses import replace

import numpy as np
import pytest

from telephony.core.barge_in import BargeInPolicy
from telephony.core.call import (
    Call,
    EndStream,
    OpenRealtime,
    Record,
    ToRealtime,
    ToTwilio,
)
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

ULAW_FRAME = base64.b64encode(b"\xff" * 160).decode()


def ulaw_ms(ms: int) -> str:
    return base64.b64encode(b"\xff" * (8 * ms)).decode()


def pcm_ms(ms: int) -> str:
    """A 440 Hz tone of ``ms`` milliseconds, PCM16 24 kHz, base64."""
    t = np.arange(ms * 24) / 24000
    return base64.b64encode((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()).decode()


def twilio(actions, kind=None):
    msgs = [a.message for a in actions if isinstance(a, ToTwilio)]
    return [m for m in msgs if kind is None or isinstance(m, kind)]


def realtime(actions, kind=None):
    cmds = [a.command for a in actions if isinstance(a, ToRealtime)]
    return [c for c in cmds if kind is None or isinstance(c, kind)]


def started_call(profile, codec="pcm16") -> Call:
    call = Call(profile, codec)
    actions = call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    assert any(isinstance(a, OpenRealtime) for a in actions)
    call.on_realtime_open(0.0)
    return call


def play(call: Call, response_id: str, item_id: str, chunks: int, ms: int, now: float):
    """Feeds a response's audio; returns the mark names sent."""
    call.on_realtime(rt.ResponseCreated(response_id), now)
    marks = []
    for _ in range(chunks):
        actions = call.on_realtime(rt.AudioDelta(response_id, item_id, pcm_ms(ms)), now)
        assert len(twilio(actions, tw.SendMedia)) == 1
        marks += [m.name for m in twilio(actions, tw.SendMark)]
    return marks


def speak_words(call: Call, now: float) -> list[str]:
    """Response r1, item i1: "one two three four ", 100 ms of audio per word; the marks sent."""
    call.on_realtime(rt.ResponseCreated("r1"), now)
    marks = []
    for word in ("one ", "two ", "three ", "four "):
        actions = call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(100)), now)
        marks += [m.name for m in twilio(actions, tw.SendMark)]
        call.on_realtime(rt.TranscriptDelta("r1", "i1", word), now)
    return marks


@pytest.fixture
def profile(profile):
    """These tests pin the stop path (clear, truncate at what was heard, cancel, cut transcripts):
    every caller sound stops the agent at once, as ``resume_false_interruptions = false`` does.
    The pause and its decision are tests/test_barge_in.py's."""
    return replace(profile, barge_in=BargeInPolicy(resume_false_interruptions=False))


def test_open_configures_session_and_greets(profile):
    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA1", custom_parameters={"from": "+15550001"}), 0.0)
    actions = call.on_realtime_open(0.0)
    config = realtime(actions, rt.ConfigureSession)[0].config
    assert config.audio_format == "pcm16" and config.voice == profile.voice
    greet = realtime(actions, rt.CreateResponse)[0]
    assert profile.greeting in greet.instructions


def test_caller_audio_is_forwarded_per_frame_and_early_audio_kept(profile):
    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    assert call.on_twilio(tw.Media(ULAW_FRAME), 0.0) == []  # upstream not open yet: kept
    actions = call.on_realtime_open(0.02)
    assert len(realtime(actions, rt.AppendAudio)) == 1
    actions = call.on_twilio(tw.Media(ULAW_FRAME), 0.04)
    (append,) = realtime(actions, rt.AppendAudio)
    assert len(base64.b64decode(append.audio)) == 160 * 3 * 2  # 20 ms at 24 kHz, 16 bit


def test_agent_audio_goes_out_as_media_then_mark(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    actions = call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(100)), 0.0)
    assert [type(m) for m in twilio(actions)] == [tw.SendMedia, tw.SendMark]
    ulaw = base64.b64decode(twilio(actions, tw.SendMedia)[0].payload)
    assert abs(len(ulaw) - 800) <= 16  # 100 ms at 8 kHz, less the filter's delay


def test_barge_in_mid_playback_clears_truncates_and_cancels(profile):
    call = started_call(profile)
    marks = play(call, "r1", "i1", chunks=5, ms=200, now=1.0)  # 1 s of audio queued at t=1.0
    call.on_twilio(tw.Mark(marks[0]), 1.2)  # first 200 ms heard
    actions = call.on_realtime(rt.SpeechStarted("u1", 500), 1.33)  # 130 ms into the second chunk
    assert twilio(actions) == [tw.SendClear()]
    (truncate,) = realtime(actions, rt.TruncateItem)
    assert truncate.item_id == "i1" and truncate.audio_end_ms == 330
    assert realtime(actions, rt.CancelResponse)
    order = [type(a.command) for a in actions if isinstance(a, ToRealtime)]
    assert order == [rt.CancelResponse, rt.TruncateItem]  # no more audio added to what is cut


def test_barge_in_with_nothing_playing_sends_nothing(profile):
    call = started_call(profile)
    marks = play(call, "r1", "i1", chunks=1, ms=100, now=0.0)
    call.on_twilio(tw.Mark(marks[0]), 0.1)
    call.on_realtime(rt.AudioDone("r1", "i1"), 0.1)
    call.on_realtime(rt.ResponseDone("r1", "completed"), 0.1)
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 2.0)
    assert twilio(actions) == [] and realtime(actions) == []


def test_marks_echoed_by_clear_are_not_heard(profile):
    call = started_call(profile)
    marks = play(call, "r1", "i1", chunks=3, ms=100, now=0.0)
    call.on_twilio(tw.Mark(marks[0]), 0.1)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.1)
    for name in marks[1:]:  # Twilio echoes the pending marks after the clear
        call.on_twilio(tw.Mark(name), 0.12)
    assert call.ledger.heard_ms("i1", 5.0) == 100


def test_truncate_never_beyond_the_items_audio(profile):
    call = started_call(profile)
    marks = play(call, "r1", "i1", chunks=2, ms=100, now=0.0)
    call.on_twilio(tw.Mark(marks[0]), 0.1)
    # The clock says 10 s have passed, but only 200 ms were ever sent.
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 10.0)
    assert realtime(actions, rt.TruncateItem)[0].audio_end_ms == 200


def test_barge_in_after_playout_while_response_still_generating(profile):
    call = started_call(profile)
    marks = play(call, "r1", "i1", chunks=2, ms=100, now=0.0)
    for m in marks:
        call.on_twilio(tw.Mark(m), 0.2)
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 0.3)
    assert twilio(actions) == []  # nothing buffered at Twilio: no clear
    assert realtime(actions, rt.TruncateItem)[0].audio_end_ms == 200
    assert realtime(actions, rt.CancelResponse)


def test_stale_deltas_of_interrupted_response_are_dropped(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=2, ms=100, now=0.0)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.05)
    assert call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(100)), 0.06) == []
    assert call.on_realtime(rt.AudioDone("r1", "i1"), 0.07) == []


def test_second_response_after_interruption_plays_normally(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=2, ms=100, now=0.0)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.05)
    call.on_realtime(rt.ResponseDone("r1", "cancelled"), 0.1)
    marks = play(call, "r2", "i2", chunks=2, ms=100, now=1.0)
    assert len(marks) == 2
    call.on_twilio(tw.Mark(marks[0]), 1.1)
    assert call.ledger.heard_ms("i2", 1.1) == pytest.approx(100)
    actions = call.on_realtime(rt.SpeechStarted("u2", 0), 1.15)
    assert realtime(actions, rt.TruncateItem)[0] == rt.TruncateItem("i2", 150)


def test_interrupted_transcript_is_cut_to_what_was_heard(profile):
    call = started_call(profile)
    marks = speak_words(call, 0.0)
    call.on_twilio(tw.Mark(marks[0]), 0.1)
    call.on_twilio(tw.Mark(marks[1]), 0.2)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.2)  # half of 400 ms heard, "three" cut short
    assert call.agent_transcript("i1") == "one two "


def test_twilio_stop_ends_the_stream(profile):
    call = started_call(profile)
    actions = call.on_twilio(tw.Stop("CA1"), 1.0)
    assert any(isinstance(a, EndStream) and not a.abnormal for a in actions)
    assert call.on_twilio(tw.Media(ULAW_FRAME), 1.1) == []


def test_fatal_realtime_error_ends_with_fallback_but_client_error_does_not(profile):
    call = started_call(profile)
    actions = call.on_realtime(rt.RealtimeError("invalid_request_error", "response_cancel_not_active",
                                                "no active response", "evt_1"), 1.0)
    assert not any(isinstance(a, EndStream) for a in actions)
    actions = call.on_realtime(rt.RealtimeError("server_error", None, "boom", None), 1.0)
    assert any(isinstance(a, EndStream) and a.abnormal for a in actions)


def test_realtime_drop_reconnects_once_then_ends_abnormally(profile):
    call = started_call(profile)
    actions = call.on_realtime_closed("connection reset")
    assert any(isinstance(a, OpenRealtime) for a in actions)
    assert not any(isinstance(a, EndStream) for a in actions)
    call.on_realtime_open(1.0)
    actions = call.on_realtime_closed("connection reset again")
    assert [a for a in actions if isinstance(a, EndStream)][0].abnormal


def test_a_refusal_close_4000_is_never_retried(profile):
    call = started_call(profile)
    actions = call.on_realtime_closed("closed by the provider (4000: invalid_request_error.x)", close_code=4000)
    assert not any(isinstance(a, OpenRealtime) for a in actions)
    end = [a for a in actions if isinstance(a, EndStream)][0]
    assert end.abnormal and "4000" in end.reason and "REALTIME_DIALECT" not in end.reason


def test_a_retired_beta_shape_names_the_setting_to_change(profile, caplog):
    call = started_call(profile)
    actions = call.on_realtime(rt.RealtimeError("invalid_request_error", "beta_api_shape_disabled",
                                                "The Realtime Beta API is no longer supported.", None), 1.0)
    end = [a for a in actions if isinstance(a, EndStream)][0]
    assert end.abnormal and "REALTIME_DIALECT=ga" in end.reason
    # The close 4000 that follows is not a second report, nor a reconnect.
    assert call.on_realtime_closed("closed by the provider (4000: invalid_request_error.beta_api_shape_disabled)",
                                   close_code=4000) == []
    assert [r.getMessage().count("REALTIME_DIALECT=ga") for r in caplog.records] == [1]


def test_a_sip_sideband_refused_with_4000_hangs_up_rather_than_reconnects(profile):
    call = Call(profile, carries_media=False)
    call.begin("rtc_1", {"call_sid": "rtc_1"}, 0.0)
    call.on_realtime_open(0.1)
    actions = call.on_realtime_closed("closed by the provider (4000: invalid_request_error.beta_api_shape_disabled)",
                                      close_code=4000)
    assert not any(isinstance(a, OpenRealtime) for a in actions)
    assert [type(a).__name__ for a in actions] == ["HangUp"] and "REALTIME_DIALECT=ga" in actions[0].reason


def test_connect_failure_ends_at_once(profile):
    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    actions = call.on_realtime_closed("connect failed: refused")
    assert [a for a in actions if isinstance(a, EndStream)][0].abnormal


def test_reconnect_resends_config_and_restores_conversation_without_greeting(profile):
    call = started_call(profile)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.1)
    call.on_realtime(rt.ResponseCreated("r1"), 0.5)
    call.on_realtime(rt.TranscriptDelta("r1", "a1", "Hello "), 0.5)
    call.on_realtime(rt.TranscriptDone("r1", "a1", "Hello there."), 0.6)
    call.on_realtime(rt.InputTranscript("u1", "Hi, I need help."), 0.7)  # arrives late, ordered by speech
    call.on_realtime(rt.SpeechStarted("u2", 0), 1.0)
    call.on_realtime(rt.InputTranscript("u2", "With my bill."), 1.5)
    call.on_realtime_closed("dropped")
    actions = call.on_realtime_open(2.0)
    commands = realtime(actions)
    assert isinstance(commands[0], rt.ConfigureSession)
    assert commands[1:] == [rt.AddUserText("Hi, I need help."), rt.AddAssistantText("Hello there."),
                            rt.AddUserText("With my bill.")]
    assert not realtime(actions, rt.CreateResponse)  # no second greeting


def test_stream_with_refused_token_ends_with_policy_violation(profile):
    call = Call(profile, verify_start=lambda start: "forged" if start.call_sid == "CA2" else None)
    actions = call.on_twilio(tw.Start("MZ1", "CA2", custom_parameters={"token": "x"}), 0.0)
    assert not any(isinstance(a, OpenRealtime) for a in actions)
    (end,) = [a for a in actions if isinstance(a, EndStream)]
    assert end.policy_violation and call.ended
    ok = Call(profile, verify_start=lambda start: None)
    actions = ok.on_twilio(tw.Start("MZ1", "CA1", custom_parameters={"token": "t", "from": "+1"}), 0.0)
    assert any(isinstance(a, OpenRealtime) for a in actions) and ok.parameters == {"from": "+1"}


def test_silent_stream_times_out(profile):
    call = Call(profile, media_timeout_s=2.0)
    call.on_tick(0.0)
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.5)
    assert call.on_tick(2.4) == []
    call.on_twilio(tw.Media(ULAW_FRAME, stream_sid="MZ1"), 2.4)
    assert call.on_tick(4.3) == []
    actions = call.on_tick(4.5)
    assert any(isinstance(a, EndStream) and a.abnormal for a in actions)


def test_marks_never_sent_are_told_from_marks_cleared(profile, caplog):
    call = started_call(profile)
    marks = play(call, "r1", "i1", chunks=2, ms=100, now=0.0)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.05)  # clear: pending marks come back
    call.on_twilio(tw.Mark(marks[1]), 0.06)
    call.on_twilio(tw.Mark("bogus"), 0.07)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["call CA1: Twilio echoed mark 'bogus', which we never sent; ignored"]


def test_media_before_start_and_bad_payload_are_dropped(profile):
    call = Call(profile)
    assert call.on_twilio(tw.Media(ULAW_FRAME), 0.0) == []
    call = started_call(profile)
    assert call.on_twilio(tw.Media("not base64!!"), 0.0) == []
    assert realtime(call.on_twilio(tw.Media(ULAW_FRAME), 0.02), rt.AppendAudio)


def test_dtmf_burst_becomes_one_user_message(profile):
    call = started_call(profile)
    for i, digit in enumerate("123#"):
        call.on_twilio(tw.Dtmf(digit), 0.3 * i)
        assert call.on_tick(0.3 * i + 0.1) == []
    actions = call.on_tick(0.9 + 1.0)
    (text,) = realtime(actions, rt.AddUserText)
    assert "123#" in text.text
    assert realtime(actions, rt.CreateResponse)
    assert call.on_tick(5.0) == []


def test_non_mulaw_start_is_refused(profile):
    call = Call(profile)
    actions = call.on_twilio(tw.Start("MZ1", "CA1", encoding="audio/x-alaw"), 0.0)
    assert any(isinstance(a, EndStream) for a in actions)
    assert not any(isinstance(a, OpenRealtime) for a in actions)


def test_records_barge_in_with_heard_ms(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 0.12)
    (rec,) = [a for a in actions if isinstance(a, Record) and a.kind == "barge_in"]
    assert rec.data == {"item_id": "i1", "heard_ms": 120}


# --- Tools and call control ---

from telephony.core.actions import HangUp, Transfer  # noqa: E402


def tool_call(call, name, args, now, response="r1", item="f1", call_id="c1"):
    call.on_realtime(rt.OutputItemAdded(response, item, "function_call", name, call_id), now)
    return call.on_realtime(rt.FunctionCall(response, item, call_id, "", args), now)


def test_end_call_waits_for_the_goodbye_to_be_heard(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r0"), 0.0)  # the greeting
    call.on_realtime(rt.ResponseDone("r0", "completed"), 0.0)
    # A response that calls end_call without saying anything first: the core asks for the goodbye.
    call.on_realtime(rt.ResponseCreated("r1"), 1.0)
    actions = tool_call(call, "end_call", "{}", 1.0)
    assert realtime(actions, rt.AddFunctionOutput)[0].call_id == "c1"
    assert not realtime(actions, rt.CreateResponse)  # r1 is still open: asked for when it is done
    actions = call.on_realtime(rt.ResponseDone("r1", "completed"), 1.1)
    assert realtime(actions, rt.CreateResponse)
    assert call.on_tick(1.2) == []  # the goodbye response has not even started
    marks = play(call, "r2", "i2", chunks=2, ms=500, now=1.3)
    call.on_realtime(rt.ResponseDone("r2", "completed"), 1.4)
    assert call.on_tick(1.5) == []
    assert not any(isinstance(a, HangUp) for a in call.on_twilio(tw.Mark(marks[0]), 1.8))
    actions = call.on_twilio(tw.Mark(marks[1]), 2.3)  # the last word was heard
    assert [a for a in actions if isinstance(a, HangUp)] == [HangUp("end_call: the agent ended the call")]
    assert call.on_tick(3.0) == []  # once only


def test_end_call_after_speaking_does_not_ask_for_another_turn(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    actions = tool_call(call, "end_call", '{"reason": "bye"}', 0.1)
    actions += call.on_realtime(rt.ResponseDone("r1", "completed"), 0.1)
    assert not realtime(actions, rt.CreateResponse)
    actions = call.on_tick(0.5)  # 300 ms sent at 0.0, no echo yet: interpolation is not proof
    assert not any(isinstance(a, HangUp) for a in actions)


def test_after_playout_action_has_a_deadline(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    tool_call(call, "end_call", "{}", 0.1)
    call.on_realtime(rt.ResponseDone("r1", "completed"), 0.1)
    actions = call.on_tick(25.0)  # the mark never came back
    assert any(isinstance(a, HangUp) for a in actions)


def test_transfer_only_to_listed_destinations(profile):
    profile = replace(profile, transfer_targets={"support": "+15550009999"})
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    actions = tool_call(call, "transfer_call", '{"destination": "+15551112222"}', 0.0)
    assert "error" in realtime(actions, rt.AddFunctionOutput)[0].output
    actions = call.on_realtime(rt.ResponseDone("r1", "completed"), 0.1)
    assert realtime(actions, rt.CreateResponse)  # so the model can tell the caller
    call.on_realtime(rt.ResponseCreated("r2"), 0.2)
    tool_call(call, "transfer_call", '{"destination": "support"}', 0.2, response="r2", call_id="c2")
    actions = call.on_realtime(rt.ResponseDone("r2", "completed"), 0.3)
    actions += call.on_realtime(rt.ResponseCreated("r3"), 0.3)
    actions += call.on_realtime(rt.ResponseDone("r3", "completed"), 0.4)
    assert [a for a in actions if isinstance(a, Transfer)] == [Transfer("+15550009999")]


@pytest.mark.parametrize("name,args,error", [("launch_rockets", "{}", "unknown tool"),
                                             ("end_call", "{not json", "not valid JSON"),
                                             ("end_call", "[1]", "JSON object")])
def test_bad_tool_calls_answer_the_model_with_an_error(profile, name, args, error):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    actions = tool_call(call, name, args, 0.0)
    assert error in realtime(actions, rt.AddFunctionOutput)[0].output


def test_answering_machine_gets_the_voicemail_then_a_hang_up(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=2, ms=500, now=0.0)  # greeting playing over the machine's message
    actions = call.on_answered_by("machine_end_beep", 0.3)
    assert twilio(actions) == [tw.SendClear()]
    (voicemail,) = realtime(actions, rt.CreateResponse)
    assert profile.voicemail in voicemail.instructions
    marks = play(call, "r2", "i2", chunks=1, ms=400, now=0.4)
    call.on_realtime(rt.ResponseDone("r2", "completed"), 0.5)
    actions = call.on_twilio(tw.Mark(marks[0]), 0.8)
    assert [a.reason for a in actions if isinstance(a, HangUp)] == ["voicemail left (machine_end_beep)"]


def test_a_human_answer_changes_nothing(profile):
    call = started_call(profile)
    actions = call.on_answered_by("human", 0.3)
    assert realtime(actions) == [] and twilio(actions) == []
    assert not any(isinstance(a, HangUp) for a in call.on_tick(60.0))


def test_per_call_overrides_come_from_stream_parameters(profile):
    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA1", custom_parameters={
        "instructions": "Remind about the dentist.", "voice": "coral", "greeting": "Hi, clinic here."}), 0.0)
    actions = call.on_realtime_open(0.0)
    config = realtime(actions, rt.ConfigureSession)[0].config
    assert config.instructions == "Remind about the dentist." and config.voice == "coral"
    assert "Hi, clinic here." in realtime(actions, rt.CreateResponse)[0].instructions


def test_transcript_turns_carry_speaker_time_and_what_was_heard(profile):
    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA1"), 10.0)
    call.on_realtime_open(10.0)
    records = call.on_realtime(rt.InputTranscript("u1", "Hello there"), 11.5)
    assert [r.data for r in records if isinstance(r, Record)] == [
        {"speaker": "caller", "item_id": "u1", "text": "Hello there", "at": 1.5}]
    marks = speak_words(call, 12.0)
    call.on_twilio(tw.Mark(marks[0]), 12.1)
    actions = call.on_realtime(rt.SpeechStarted("u2", 0), 12.2)
    (turn,) = [a.data for a in actions if isinstance(a, Record) and a.kind == "transcript"]
    assert turn == {"speaker": "agent", "item_id": "i1", "text": "one two ", "at": 2.2,
                    "interrupted": True, "heard_ms": 200}
    # The model's full transcript of the interrupted item arrives later: not recorded again.
    assert call.on_realtime(rt.TranscriptDone("r1", "i1", "one two three four"), 12.3) == []


def test_speech_stopped_is_recorded_for_the_turn_latency(profile):
    call = started_call(profile)
    actions = call.on_realtime(rt.SpeechStopped("item_9", 2300), 5.0)
    assert actions == [Record("speech_stopped", {"item_id": "item_9", "audio_end_ms": 2300})]


def test_marks_follow_every_100_ms_of_agent_audio_and_the_end_of_each_item(profile):
    call = started_call(profile, "g711_ulaw")
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    sent = []
    for i in range(5):  # 200 ms in 40 ms deltas
        sent += twilio(call.on_realtime(rt.AudioDelta("r1", "i1", ulaw_ms(40)), i * 0.04))
    assert [type(m) for m in sent].count(tw.SendMark) == 1 and isinstance(sent[3], tw.SendMark)  # after 120 ms
    # The item ends: its last 80 ms get their mark at once, so the end of playout is known.
    done = twilio(call.on_realtime(rt.AudioDone("r1", "i1"), 0.2), tw.SendMark)
    assert len(done) == 1
    # A model that pauses without ending the item: the mark follows on the clock.
    call.on_realtime(rt.AudioDelta("r1", "i1", ulaw_ms(40)), 0.3)
    assert twilio(call.on_tick(0.32), tw.SendMark) == []
    assert len(twilio(call.on_tick(0.4), tw.SendMark)) == 1
