"""Core behaviour pinned where the audit's hand mutations and mutmut found the suite blind.

Each test names the mutation it kills; all of them run in scripts/mutation.sh.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_call import pcm_ms, play, realtime, started_call, twilio

from telephony.core.actions import EndStream, HangUp, OpenRealtime, Record
from telephony.core.barge_in import BargeInPolicy
from telephony.core.call import AFTER_PLAYOUT_TIMEOUT_S, DTMF_GAP_S, Call
from telephony.core.playout import PlayoutLedger
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw


@pytest.fixture
def profile(profile):
    """The stop path, pinned: every caller sound stops the agent at once, as
    ``resume_false_interruptions = false`` does (tests/test_barge_in.py covers the pause)."""
    return replace(profile, barge_in=BargeInPolicy(resume_false_interruptions=False))


def records(actions, kind):
    return [a.data for a in actions if isinstance(a, Record) and a.kind == kind]


# --- The playout ledger ---


def test_heard_audio_is_clamped_to_the_head_chunk_while_its_mark_is_late():
    """Mutation: drop ``min(playing, chunk length)`` in heard_ms. With a later chunk of the same
    item already sent, only the clamp keeps a late mark echo from over-counting."""
    ledger = PlayoutLedger()
    first = ledger.sent("a", 100, now=0.0)
    second = ledger.sent("a", 100, now=0.0)
    assert first and second
    assert ledger.heard_ms("a", 0.15) == 100  # 150 ms since start, but mark 1 has not come back
    assert ledger.heard_ms("a", 5.0) == 100


def test_barge_in_after_a_late_mark_truncates_at_the_unconfirmed_chunk_end(profile):
    """The same clamp seen by the model: audio_end_ms stays at what Twilio may have played."""
    call = started_call(profile)
    play(call, "r1", "i1", chunks=2, ms=100, now=0.0)  # two marks out, neither echoed yet
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 0.16)
    (truncate,) = realtime(actions, rt.TruncateItem)
    assert truncate.audio_end_ms == 100


def test_playback_start_is_not_reset_by_each_delta():
    """Mutation: set the head's start time on every ``sent``, not only when the buffer was empty."""
    ledger = PlayoutLedger()
    ledger.sent("a", 40, now=0.0)
    ledger.sent("a", 40, now=0.03)  # Twilio is still playing the first 40 ms
    assert ledger.heard_ms("a", 0.05) == pytest.approx(50)


def test_forget_drops_an_items_heard_and_sent_ms():
    ledger = PlayoutLedger()
    mark = ledger.sent("a", 100, now=0.0)
    ledger.echoed(mark, now=0.1)
    ledger.sent("b", 100, now=0.1)
    ledger.forget("a")
    assert ledger.heard_ms("a", 1.0) == 0 and ledger.sent_ms("a") == 0
    assert ledger.sent_ms("b") == 100


def test_a_forgotten_item_sent_again_starts_from_nothing():
    ledger = PlayoutLedger()
    ledger.forget("never-sent")  # nothing to forget: no error
    mark = ledger.sent("a", 100, now=0.0)
    ledger.echoed(mark, now=0.1)
    ledger.forget("a")
    ledger.sent("a", 50, now=1.0)
    ledger.clear()
    assert ledger.heard_ms("a", 2.0) == 0  # not the 100 ms heard before it was forgotten


def test_a_later_chunk_is_clamped_to_its_own_length_not_its_end_position():
    ledger = PlayoutLedger()
    first = ledger.sent("a", 100, now=0.0)
    ledger.sent("a", 100, now=0.0)  # 100-200 ms
    ledger.sent("a", 100, now=0.0)  # 200-300 ms
    ledger.echoed(first, now=0.1)  # the second chunk starts playing at 0.1…
    assert ledger.heard_ms("a", 0.35) == 200  # …and its mark is late: no further than its end


def test_only_marks_this_ledger_handed_out_count_as_issued():
    ledger = PlayoutLedger()
    assert not ledger.issued("1") and not ledger.issued("0")
    mark = ledger.sent("a", 100, now=0.0)
    assert mark == "1" and ledger.issued("1") and not ledger.issued("2") and not ledger.issued("x")


def test_marks_are_numbered_one_by_one_and_sealing_twice_gives_nothing():
    ledger = PlayoutLedger()
    ledger.sent("a", 40, now=0.0)
    assert ledger.seal() == "1" and ledger.seal() is None
    ledger.sent("a", 40, now=0.0)
    assert ledger.seal() == "2"


def test_clear_stops_the_clock_of_the_chunk_that_was_playing():
    ledger = PlayoutLedger()
    ledger.sent("a", 100, now=0.0)
    ledger.clear()
    assert not ledger.unplayed and ledger.playing_item is None
    assert ledger.heard_ms("a", 0.05) == 0


def test_an_echo_moves_the_next_chunks_clock_to_the_echo_time():
    ledger = PlayoutLedger()
    first = ledger.sent("a", 100, now=0.0)
    ledger.sent("a", 100, now=0.0)
    ledger.echoed(first, now=0.3)  # Twilio ran late: the second chunk starts playing at 0.3
    assert ledger.heard_ms("a", 0.35) == pytest.approx(150)


# --- Ending ---


def test_a_stream_gone_before_start_is_not_recorded_as_a_call(profile):
    """Found by the metrics test: it was recorded as a normal end, so no_start never counted."""
    call = Call(profile)
    assert call.on_twilio(tw.Stop(), 0.0) == [EndStream("stream closed before start")]
    assert call.ended and call.on_tick(1.0) == []


def test_a_caller_hanging_up_ends_the_call_normally_once(profile):
    call = started_call(profile)
    actions = call.on_twilio(tw.Stop(), 1.0)
    assert actions == [Record("end", {"reason": "caller hung up (Twilio stop)", "abnormal": False}),
                       EndStream("caller hung up (Twilio stop)", False)]
    assert call.on_twilio(tw.Stop(), 1.1) == [] and call.end("shutdown") == []


def test_ending_from_outside_is_abnormal_so_twilio_speaks_the_fallback(profile):
    call = started_call(profile)
    assert call.end("server shutting down") == [
        Record("end", {"reason": "server shutting down", "abnormal": True}),
        EndStream("server shutting down", True)]


# --- DTMF ---


def test_digits_are_one_burst_until_a_full_second_of_quiet(profile):
    """Mutation: DTMF_GAP_S 1.0 → 0.4. The README promises one second; pinned on both sides."""
    assert DTMF_GAP_S == 1.0
    call = started_call(profile)
    call.on_twilio(tw.Dtmf("4"), 10.0)
    assert call.on_tick(10.5) == []
    call.on_twilio(tw.Dtmf("2"), 10.9)  # 0.9 s after the first: the same burst
    assert call.on_tick(11.89) == []  # 0.99 s of quiet: not yet
    actions = call.on_tick(11.9)
    (text,) = realtime(actions, rt.AddUserText)
    assert text.text == "The caller pressed 42 on the keypad."
    assert records(actions, "dtmf") == [{"digits": "42"}]
    assert realtime(actions, rt.CreateResponse)


def test_digits_while_the_model_speaks_do_not_ask_for_another_response(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_twilio(tw.Dtmf("9"), 0.0)
    actions = call.on_tick(1.0)
    assert realtime(actions, rt.AddUserText) and not realtime(actions, rt.CreateResponse)


def test_digits_before_the_model_is_connected_are_dropped(profile):
    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    call.on_twilio(tw.Dtmf("1"), 0.0)
    assert call.on_tick(0.0) == [] and call.on_tick(2.0) == []
    call.on_realtime_open(2.0)
    assert call.on_tick(4.0) == []  # the burst is gone, not replayed


# --- Answering-machine detection ---


@pytest.mark.parametrize("verdict", ["machine_end_beep", "machine_end_silence", "machine_end_other"])
def test_every_end_of_message_verdict_leaves_the_voicemail(profile, verdict):
    call = started_call(profile)
    actions = call.on_answered_by(verdict, 0.3)
    assert records(actions, "answered_by") == [{"answered_by": verdict}]
    (voicemail,) = realtime(actions, rt.CreateResponse)
    assert profile.voicemail in voicemail.instructions
    actions = call.on_tick(0.4 + AFTER_PLAYOUT_TIMEOUT_S)  # nothing more is said: hang up anyway
    assert [a.reason for a in actions if isinstance(a, HangUp)] == [f"voicemail left ({verdict})"]


def test_a_fax_is_hung_up_on_at_once(profile):
    """Mutation: the fax verdict ignored (treated as a human)."""
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    actions = call.on_answered_by("fax", 0.1)
    assert [a for a in actions if isinstance(a, HangUp)] == [HangUp("answered by a fax machine")]
    assert realtime(actions) == []


@pytest.mark.parametrize("verdict", ["human", "unknown", "machine_start"])
def test_other_verdicts_let_the_conversation_go_on(profile, verdict):
    call = started_call(profile)
    actions = call.on_answered_by(verdict, 0.3)
    assert actions == [Record("answered_by", {"answered_by": verdict})]


def test_a_machine_with_no_voicemail_to_leave_is_hung_up_on(profile):
    from dataclasses import replace

    call = started_call(replace(profile, voicemail=""))
    actions = call.on_answered_by("machine_end_beep", 0.3)
    assert [a.reason for a in actions if isinstance(a, HangUp)] == [
        "voicemail (machine_end_beep), nothing to leave"]


def test_the_voicemail_cancels_the_response_in_progress_and_drops_its_audio(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    actions = call.on_answered_by("machine_end_beep", 0.1)
    assert twilio(actions) == [tw.SendClear()] and realtime(actions, rt.CancelResponse)
    assert call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(100)), 0.2) == []


def test_a_second_verdict_does_not_leave_a_second_voicemail(profile):
    call = started_call(profile)
    call.on_answered_by("machine_end_beep", 0.3)
    actions = call.on_answered_by("machine_end_other", 0.4)
    assert realtime(actions) == [] and not any(isinstance(a, HangUp) for a in actions)



# --- Records the shells count and keep (found by mutmut: only end-to-end tests looked) ---


def test_realtime_errors_are_recorded_and_only_fatal_ones_end_the_call(profile):
    call = started_call(profile)
    actions = call.on_realtime(rt.RealtimeError("invalid_request_error", "bad_value", "no", "e1"), 0.1)
    assert actions == [Record("realtime_error", {"type": "invalid_request_error", "code": "bad_value"})]
    assert not call.ended
    actions = call.on_realtime(rt.RealtimeError("server_error", None, "broke", None), 0.2)
    assert actions == [Record("realtime_error", {"type": "server_error", "code": None}),
                       Record("end", {"reason": "Realtime error server_error", "abnormal": True}),
                       EndStream("Realtime error server_error", True)]
    assert call.ended and call.on_realtime(rt.RealtimeError("server_error", None, "x", None), 0.3) == []


def test_a_fatal_error_with_a_code_names_the_code(profile):
    call = started_call(profile)
    fatal = rt.RealtimeError("invalid_request_error", "session_expired", "expired", None)
    if not fatal.fatal:
        pytest.skip("session_expired is not a fatal code in this dialect")
    (end,) = [a for a in call.on_realtime(fatal, 0.1) if isinstance(a, EndStream)]
    assert end.reason == "Realtime error session_expired"


def test_after_playout_fires_exactly_at_its_deadline_and_says_it_timed_out(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    tool_call_end(call, 0.1)
    call.on_realtime(rt.ResponseDone("r1", "completed"), 0.1)
    deadline = 0.1 + AFTER_PLAYOUT_TIMEOUT_S
    assert not [a for a in call.on_tick(deadline - 0.001) if isinstance(a, HangUp)]
    actions = call.on_tick(deadline)
    assert records(actions, "after_playout") == [{"action": "HangUp", "timed_out": True}]
    assert [a for a in actions if isinstance(a, HangUp)] == [HangUp("end_call: the agent ended the call")]


def test_after_playout_once_heard_says_it_did_not_time_out(profile):
    call = started_call(profile)
    marks = play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    call.on_realtime(rt.AudioDone("r1", "i1"), 0.0)
    tool_call_end(call, 0.1)
    call.on_realtime(rt.ResponseDone("r1", "completed"), 0.1)
    actions = call.on_twilio(tw.Mark(marks[-1]), 0.3)
    assert records(actions, "after_playout") == [{"action": "HangUp", "timed_out": False}]


def tool_call_end(call: Call, now: float) -> list:
    call.on_realtime(rt.OutputItemAdded("r1", "f1", "function_call", "end_call", "c1"), now)
    return call.on_realtime(rt.FunctionCall("r1", "f1", "c1", "", "{}"), now)


def test_audio_done_seals_the_items_last_chunk_with_a_mark(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(40)), 0.0)  # under 100 ms: no mark yet
    actions = call.on_realtime(rt.AudioDone("r1", "i1"), 0.0)
    assert twilio(actions, tw.SendMark) == [tw.SendMark("1")]
    assert twilio(call.on_realtime(rt.AudioDone("r1", "i1"), 0.0), tw.SendMark) == []  # nothing to seal


def test_audio_done_of_an_interrupted_item_sends_nothing(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=40, now=0.0)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.02)
    assert call.on_realtime(rt.AudioDone("r1", "i1"), 0.03) == []
    assert call.on_realtime(rt.AudioDone("r1", "i2"), 0.03) == []  # another item of the cancelled response


def test_audio_of_any_item_of_a_cancelled_response_is_dropped(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.1)
    assert call.on_realtime(rt.AudioDelta("r1", "i9", pcm_ms(100)), 0.2) == []


def test_audio_of_an_unannounced_response_plays_with_one_warning(profile, caplog):
    call = started_call(profile)
    first = call.on_realtime(rt.AudioDelta("r9", "i9", pcm_ms(100)), 0.0)
    second = call.on_realtime(rt.AudioDelta("r9", "i9", pcm_ms(100)), 0.1)
    assert twilio(first, tw.SendMedia) and twilio(second, tw.SendMedia)
    assert caplog.text.count("which was never announced") == 1


def test_an_empty_audio_delta_sends_nothing(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    assert call.on_realtime(rt.AudioDelta("r1", "i1", ""), 0.0) == []
    assert call.ledger.sent_ms("i1") == 0


def test_an_empty_audio_delta_leaves_nothing_pending(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_realtime(rt.AudioDelta("r1", "i1", ""), 0.0)
    assert not call.ledger.unplayed


# --- Caller audio ---


def ulaw_frame(byte: int) -> str:
    import base64

    return base64.b64encode(bytes([byte]) * 160).decode()


def test_early_caller_audio_is_kept_up_to_two_seconds_then_sent_in_order(profile):
    call = Call(profile, "g711_ulaw")  # passthrough: what arrives is what the model gets
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    frames = [ulaw_frame(i) for i in range(101)]
    for frame in frames:
        assert call.on_twilio(tw.Media(frame), 0.0) == []
    sent = realtime(call.on_realtime_open(0.1), rt.AppendAudio)
    assert [a.audio for a in sent] == frames[:100]  # the 101st is over the 2 s kept


@pytest.mark.parametrize("track,forwarded", [("inbound", True), ("inbound_track", True), ("outbound", False)])
def test_only_the_callers_track_goes_to_the_model(profile, track, forwarded):
    call = started_call(profile)
    actions = call.on_twilio(tw.Media(ulaw_frame(7), track=track), 0.1)
    assert bool(realtime(actions, rt.AppendAudio)) is forwarded


def test_a_refused_stream_still_names_its_call(profile):
    call = Call(profile, verify_start=lambda start: "bad token")
    actions = call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    assert call.call_sid == "CA1" and records(actions, "refused") == [{"reason": "bad token"}]


def test_the_stream_is_dead_only_after_more_than_the_media_timeout(profile):
    call = Call(profile, media_timeout_s=5.0)
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    call.on_realtime_open(0.0)
    assert not any(isinstance(a, EndStream) for a in call.on_tick(5.0))
    (end,) = [a for a in call.on_tick(5.01) if isinstance(a, EndStream)]
    assert end.reason == "no media for 5 s" and end.abnormal


# --- Reconnecting, and what the new session is told ---


def test_a_drop_is_recorded_and_the_reconnect_says_how_much_was_restored(profile):
    call = started_call(profile)
    assert call.on_realtime_closed("gone") == [Record("realtime_dropped", {"reason": "gone"}), OpenRealtime()]
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.5)
    call.on_realtime(rt.InputTranscript("u1", "hello"), 0.6)
    assert records(call.on_realtime_open(1.0), "realtime_reconnected") == [{"items": 1}]
    assert call.on_realtime_closed("again") == [
        Record("end", {"reason": "Realtime closed: again", "abnormal": True}), EndStream("Realtime closed: again", True)]


def test_the_new_session_hears_the_conversation_in_the_order_it_happened(profile):
    call = started_call(profile)
    call.on_realtime(rt.SpeechStarted("u1", 0), 0.5)  # the caller speaks first…
    call.on_realtime(rt.ResponseCreated("r1"), 1.0)
    for word in ("Sure, ", "one ", "moment."):  # …the agent answers (deltas only, no done yet)…
        call.on_realtime(rt.TranscriptDelta("r1", "i2", word), 1.0)
    call.on_realtime(rt.InputTranscript("u1", "Can you help?"), 1.2)  # …the caller's text comes late
    call.on_realtime(rt.TranscriptDone("r1", "i3", "Anything else?"), 1.3)
    call.on_realtime_closed("gone")
    restored = realtime(call.on_realtime_open(2.0))
    texts = [(type(c).__name__, c.text) for c in restored if isinstance(c, (rt.AddUserText, rt.AddAssistantText))]
    assert texts == [("AddUserText", "Can you help?"), ("AddAssistantText", "Sure, one moment."),
                     ("AddAssistantText", "Anything else?")]
    assert call.agent_transcript("i2") == "Sure, one moment."


def test_transcript_turns_name_the_speaker_and_the_time_to_the_millisecond(profile):
    call = started_call(profile)
    (caller,) = records(call.on_realtime(rt.InputTranscript("u1", "hi"), 1.23456), "transcript")
    (agent,) = records(call.on_realtime(rt.TranscriptDone("r1", "i1", "hello"), 2.0), "transcript")
    assert caller == {"speaker": "caller", "item_id": "u1", "text": "hi", "at": 1.235}
    assert agent == {"speaker": "agent", "item_id": "i1", "text": "hello", "at": 2.0}


# --- Responses and tools ---


def test_a_finished_response_is_recorded_with_its_usage(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    actions = call.on_realtime(rt.ResponseDone("r1", "completed", {"total_tokens": 9}), 0.1)
    assert records(actions, "response_done") == [
        {"response_id": "r1", "status": "completed", "usage": {"total_tokens": 9}}]


def test_a_tool_call_is_recorded_and_a_failed_one_asks_the_model_to_speak(profile):
    call = started_call(profile)
    actions = tool_call_end(call, 0.1)  # no response in progress (r1 was never created)
    (tool,) = records(actions, "tool_call")
    assert (tool["name"], tool["arguments"], tool["output"]["ok"], tool["outcome"]) == ("end_call", "{}", True, "ok")
    assert realtime(actions, rt.CreateResponse)
    call.on_realtime(rt.ResponseCreated("r2"), 0.2)
    call.on_realtime(rt.ResponseDone("r2", "completed"), 0.3)
    failed = call.on_realtime(rt.FunctionCall("r3", "f2", "c2", "no_such_tool", "{}"), 0.4)
    (tool,) = records(failed, "tool_call")
    assert tool["name"] == "no_such_tool" and "error" in tool["output"]
    assert realtime(failed, rt.CreateResponse)


# --- Barge-in, beyond the happy path ---


def test_barge_in_after_the_response_finished_truncates_the_item_still_playing(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    call.on_realtime(rt.TranscriptDelta("r1", "i1", "one two three"), 0.0)
    call.on_realtime(rt.ResponseDone("r1", "completed"), 0.05)  # generated; Twilio still playing
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 0.1)
    assert realtime(actions, rt.TruncateItem) == [rt.TruncateItem("i1", 100)]
    assert not realtime(actions, rt.CancelResponse)
    assert call.on_realtime(rt.TranscriptDone("r1", "i1", "one two three"), 0.2) == []  # recorded already


def test_barge_in_when_all_was_heard_keeps_the_whole_transcript(profile):
    call = started_call(profile)
    marks = play(call, "r1", "i1", chunks=1, ms=100, now=0.0)
    call.on_realtime(rt.TranscriptDelta("r1", "i1", "all of it"), 0.0)
    call.on_twilio(tw.Mark(marks[0]), 0.1)  # everything sent was heard; the response goes on
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 0.2)
    (turn,) = records(actions, "transcript")
    assert turn["text"] == "all of it" and turn["heard_ms"] == 100 and turn["interrupted"] is True


def test_barge_in_before_any_audio_cancels_and_records_no_item(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    actions = call.on_realtime(rt.SpeechStarted("u1", 0), 0.1)
    assert realtime(actions) == [rt.CancelResponse()]
    assert records(actions, "barge_in") == [{"item_id": None, "heard_ms": None}]
    call.on_twilio(tw.Dtmf("5"), 0.2)  # nothing in progress now: digits get a response
    assert realtime(call.on_tick(1.3), rt.CreateResponse)


def test_the_quiet_models_last_chunk_gets_its_mark_on_a_tick(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(40)), 0.0)
    assert twilio(call.on_tick(0.1), tw.SendMark) == [tw.SendMark("1")]


# --- Voicemail details ---


def test_a_per_call_voicemail_overrides_the_profiles(profile):
    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA1", custom_parameters={"voicemail": "Call the clinic back."}), 0.0)
    call.on_realtime_open(0.0)
    (create,) = realtime(call.on_answered_by("machine_end_beep", 0.3), rt.CreateResponse)
    assert "Call the clinic back." in create.instructions and profile.voicemail not in create.instructions


def test_audio_of_the_response_cut_for_the_voicemail_is_dropped_whatever_its_item(profile):
    call = started_call(profile)
    play(call, "r1", "i1", chunks=1, ms=300, now=0.0)
    call.on_answered_by("machine_end_beep", 0.1)
    assert call.on_realtime(rt.AudioDelta("r1", "i7", pcm_ms(100)), 0.2) == []


# --- Second round of mutmut survivors ---


def test_a_start_is_recorded_with_both_sids_and_opens_the_model(profile):
    call = Call(profile, "g711_ulaw")
    assert call.on_twilio(tw.Start("MZ1", "CA1"), 0.0) == [
        Record("start", {"call_sid": "CA1", "stream_sid": "MZ1"}), OpenRealtime()]
    assert call.audio_format == "g711_ulaw"
    assert not records(call.on_realtime_open(0.0), "realtime_reconnected")  # the first session


def test_a_refused_stream_closes_as_a_policy_violation(profile):
    call = Call(profile, verify_start=lambda start: "bad token")
    assert call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)[1] == EndStream(
        "stream refused: bad token", abnormal=True, policy_violation=True)


def test_another_audio_format_ends_abnormally_naming_it(profile):
    call = Call(profile)
    actions = call.on_twilio(tw.Start("MZ1", "CA1", encoding="audio/x-alaw"), 0.0)
    assert actions == [Record("end", {"reason": "unsupported media format audio/x-alaw", "abnormal": True}),
                       EndStream("unsupported media format audio/x-alaw", True)]
    assert call.call_sid == "CA1"


def test_caller_text_without_a_speech_start_is_still_restored(profile):
    call = started_call(profile)
    call.on_realtime(rt.InputTranscript("u1", "typed in"), 0.5)
    call.on_realtime(rt.SpeechStarted("u2", 0), 0.6)  # speech whose transcript never came
    call.on_realtime_closed("gone")
    restored = realtime(call.on_realtime_open(1.0), rt.AddUserText)
    assert [c.text for c in restored] == ["typed in"]


def test_caller_audio_during_a_reconnect_waits_for_the_new_session(profile):
    call = started_call(profile)
    call.on_realtime_closed("gone")
    assert call.on_twilio(tw.Media(ulaw_frame(3)), 0.5) == []
    assert len(realtime(call.on_realtime_open(1.0), rt.AppendAudio)) == 1


def test_a_new_items_audio_is_preceded_by_the_mark_ending_the_last_one(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(40)), 0.0)
    actions = call.on_realtime(rt.AudioDelta("r1", "i2", pcm_ms(40)), 0.0)
    assert [type(m) for m in twilio(actions)] == [tw.SendMark, tw.SendMedia]
    assert twilio(actions)[0] == tw.SendMark("1")


def test_the_end_of_an_item_sends_the_resamplers_tail_before_its_mark(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(40)), 0.0)
    media, mark = twilio(call.on_realtime(rt.AudioDone("r1", "i1"), 0.0))
    assert isinstance(media, tw.SendMedia) and len(media.payload) > 0 and mark == tw.SendMark("1")


def test_a_one_millisecond_delta_is_still_played(profile):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    assert twilio(call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(1)), 0.0), tw.SendMedia)


def test_audio_after_its_response_finished_is_not_warned_about(profile, caplog):
    call = started_call(profile)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_realtime(rt.ResponseDone("r1", "completed"), 0.1)
    call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(40)), 0.2)  # a late delta of a known response
    assert "never announced" not in caplog.text


def test_benign_errors_are_logged_as_info_and_others_as_errors(profile, caplog):
    import logging

    call = started_call(profile)
    benign = rt.RealtimeError("invalid_request_error", "response_cancel_not_active", "nothing to cancel", None)
    assert benign.benign
    with caplog.at_level(logging.INFO, "telephony.call"):
        call.on_realtime(benign, 0.1)
        call.on_realtime(rt.RealtimeError("invalid_request_error", "bad_value", "no", None), 0.2)
    levels = [r.levelno for r in caplog.records if "Realtime error" in r.getMessage()]
    assert levels == [logging.INFO, logging.ERROR]


def test_a_nameless_function_call_is_answered_as_an_unknown_tool(profile):
    call = started_call(profile)
    actions = call.on_realtime(rt.FunctionCall("r1", "f1", "c9", "", "{}"), 0.1)
    (tool,) = records(actions, "tool_call")
    assert tool["name"] == "" and "error" in tool["output"]
    assert not records(call.on_tick(30.0), "after_playout")  # a failed tool schedules nothing


def test_speech_with_nothing_playing_or_generating_is_not_a_barge_in(profile):
    call = started_call(profile)
    assert call.on_realtime(rt.SpeechStarted("u1", 0), 0.1) == []


def test_the_media_clock_starts_at_the_first_tick_even_with_no_message_at_all(profile):
    call = Call(profile, media_timeout_s=5.0)
    assert call.on_tick(0.0) == []
    assert any(isinstance(a, EndStream) for a in call.on_tick(5.01))


# --- Code from the SIP merge: the no-media start, REFER transfers, built-in tool outcomes ---


def test_a_call_without_media_starts_with_its_call_id_and_no_stream(profile):
    call = Call(profile, carries_media=False)
    assert call.begin("rtc_1", {"from": "sip:+1555@x"}, 2.0) == [
        Record("start", {"call_sid": "rtc_1", "stream_sid": None}), OpenRealtime()]
    assert call.call_sid == "rtc_1"
    (turn,) = records(call.on_realtime(rt.InputTranscript("u1", "hi"), 3.5), "transcript")
    assert turn["at"] == 1.5
    assert call.on_hung_up("end_call") == [Record("end", {"reason": "end_call", "abnormal": False}),
                                           EndStream("end_call", False)]


@pytest.mark.parametrize("caller,target,refer", [
    ("sip:alice@pbx.example.com", "sip:desk@pbx.example.com", True),
    ("+15551230000", "sip:desk@pbx.example.com", False),  # not a SIP leg: dialled
    ("sip:alice@pbx.example.com", "+15557778888", False),  # a number: dialled
])
def test_a_transfer_goes_by_refer_only_from_a_sip_leg_to_a_sip_uri(profile, caller, target, refer):
    from dataclasses import replace

    from telephony.core.actions import Transfer

    call = Call(replace(profile, sip_refer=True, transfer_targets={"desk": target}))
    call.on_twilio(tw.Start("MZ1", "CA1", custom_parameters={"from": caller}), 0.0)
    call.on_realtime_open(0.0)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_realtime(rt.AudioDelta("r1", "i1", pcm_ms(100)), 0.0)  # spoke first: no extra turn
    call.on_realtime(rt.FunctionCall("r1", "f1", "c1", "transfer_call", '{"destination": "desk"}'), 0.1)
    call.on_realtime(rt.ResponseDone("r1", "completed"), 0.1)
    actions = call.on_tick(0.2 + AFTER_PLAYOUT_TIMEOUT_S)
    assert [a for a in actions if isinstance(a, Transfer)] == [Transfer(target, refer=refer)]


def test_built_in_tool_outcomes_tell_ok_error_and_unknown_apart(profile):
    from dataclasses import replace

    call = started_call(replace(profile, transfer_targets={"desk": "+15557778888"}))
    outcomes = []
    for name, args in (("end_call", "{}"), ("transfer_call", '{"destination": "nowhere"}'), ("no_such", "{}")):
        (tool,) = records(call.on_realtime(rt.FunctionCall("r1", "f1", name, name, args), 0.1), "tool_call")
        outcomes.append(tool["outcome"])
    assert outcomes == ["ok", "error", "unknown_tool"]
