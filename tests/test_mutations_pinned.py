"""Core behaviour pinned where the audit's hand mutations and mutmut found the suite blind.

Each test names the mutation it kills; all of them run in scripts/mutation.sh.
"""

from __future__ import annotations

import pytest
from test_call import pcm_ms, play, realtime, started_call, twilio

from telephony.core.actions import EndStream, HangUp, Record
from telephony.core.call import AFTER_PLAYOUT_TIMEOUT_S, DTMF_GAP_S, Call
from telephony.core.playout import PlayoutLedger
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw


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

