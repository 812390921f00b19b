"""The call core in its no-media mode (OpenAI's SIP route), message by message with a fake clock."""

from __future__ import annotations

from dataclasses import replace

from telephony.core.actions import EndStream, HangUp, OpenRealtime, Record, ToRealtime, ToTwilio, Transfer
from telephony.core.call import AFTER_PLAYOUT_TIMEOUT_S, Call
from telephony.wire import openai_sip as sideband
from telephony.wire import realtime as rt


def begun(profile, **parameters) -> Call:
    call = Call(profile, carries_media=False)
    actions = call.begin("rtc_1", {"from": "sip:+1555@x", **parameters}, 0.0)
    assert [type(a) for a in actions] == [Record, OpenRealtime]
    return call


def commands(actions):
    return [a.command for a in actions if isinstance(a, ToRealtime)]


def goodbye_with_end_call(call: Call, now: float) -> list:
    """A response that says goodbye (transcript only: no audio on a sideband) and calls end_call."""
    call.on_realtime(rt.ResponseCreated("resp_2"), now)
    call.on_realtime(sideband.AgentAudioStarted("resp_2"), now)
    call.on_realtime(rt.TranscriptDelta("resp_2", "item_2", "Goodbye!"), now)
    actions = call.on_realtime(rt.FunctionCall("resp_2", "fc_1", "call_1", "end_call", "{}"), now)
    return actions + call.on_realtime(rt.ResponseDone("resp_2", "completed"), now)


def test_open_sends_only_the_greeting(profile):
    call = begun(profile)
    (greet,) = commands(call.on_realtime_open(0.1))
    assert isinstance(greet, rt.CreateResponse) and profile.greeting in greet.instructions


def test_session_for_the_accept_carries_the_sip_headers_the_parameters_hold(profile):
    call = begun(replace(profile, sip_headers=("X-Customer-Id",)), **{"SipHeader_X-Customer-Id": "42"})
    assert call.session_config().instructions.endswith("- X-Customer-Id: 42")


def test_hang_up_waits_for_the_goodbye_to_stop_playing(profile):
    call = begun(profile)
    call.on_realtime_open(0.0)
    actions = goodbye_with_end_call(call, 1.0)
    # The goodbye was spoken in this response: no new response is asked for, and no hang-up yet.
    assert not [c for c in commands(actions) if isinstance(c, rt.CreateResponse)]
    assert not any(isinstance(a, HangUp) for a in actions + call.on_tick(2.0))
    actions = call.on_realtime(sideband.AgentAudioStopped("resp_2"), 2.5)
    assert any(isinstance(a, HangUp) for a in actions)
    assert [type(a) for a in call.on_hung_up("end_call")] == [Record, EndStream]


def test_hang_up_happens_at_the_deadline_if_stopped_never_comes(profile):
    call = begun(profile)
    call.on_realtime_open(0.0)
    goodbye_with_end_call(call, 1.0)
    assert not any(isinstance(a, HangUp) for a in call.on_tick(1.0 + AFTER_PLAYOUT_TIMEOUT_S - 0.1))
    assert any(isinstance(a, HangUp) for a in call.on_tick(1.0 + AFTER_PLAYOUT_TIMEOUT_S + 0.1))


def test_speech_started_leaves_barge_in_to_the_sip_side(profile):
    call = begun(profile)
    call.on_realtime_open(0.0)
    call.on_realtime(rt.ResponseCreated("resp_1"), 0.5)
    call.on_realtime(rt.TranscriptDelta("resp_1", "item_1", "Hello"), 0.5)
    assert call.on_realtime(rt.SpeechStarted("item_u", 700), 0.7) == []  # no truncate, no cancel
    assert call.on_realtime(rt.AudioDelta("resp_1", "item_1", "AAAA"), 0.8) == []  # nothing to play


def test_keypad_digits_become_one_message(profile):
    call = begun(profile)
    call.on_realtime_open(0.0)
    for t, digit in ((1.0, "1"), (1.2, "2")):
        assert call.on_realtime(sideband.KeypadDigit(digit), t) == []
    actions = call.on_tick(2.3)
    (text, create) = commands(actions)
    assert text == rt.AddUserText("The caller pressed 12 on the keypad.") and isinstance(create, rt.CreateResponse)


def test_transfer_refers_and_a_closed_sideband_ends_the_call_normally(profile):
    call = begun(replace(profile, transfer_targets={"desk": "sip:desk@pbx.example.com"}))
    call.on_realtime_open(0.0)
    actions = call.on_realtime(rt.FunctionCall("", "fc", "c1", "transfer_call", '{"destination": "desk"}'), 1.0)
    # Nothing said yet: the model is asked to speak, and the transfer waits for those words.
    assert [c for c in commands(actions) if isinstance(c, rt.CreateResponse)]
    for event in (rt.ResponseCreated("resp_3"), sideband.AgentAudioStarted("resp_3"),
                  rt.TranscriptDelta("resp_3", "item_3", "Putting you through."), rt.ResponseDone("resp_3", "completed")):
        actions += call.on_realtime(event, 1.5)
    assert not any(isinstance(a, Transfer) for a in actions + call.on_tick(2.0))
    actions = call.on_realtime(sideband.AgentAudioStopped("resp_3"), 2.5)
    assert Transfer("sip:desk@pbx.example.com") in actions and not any(isinstance(a, ToTwilio) for a in actions)
    (end,) = [a for a in call.on_realtime_closed("closed by OpenAI (1000)", call_over=True) if isinstance(a, Record)]
    assert end.kind == "end" and end.data["abnormal"] is False


def test_a_dropped_sideband_is_reopened_once_then_the_call_is_hung_up(profile):
    """The call goes on at OpenAI without our socket: reopen it (the server kept the session, so
    no greeting again); a second loss, or a reopen refused, hangs the call up as abnormal."""
    call = begun(profile)
    call.on_realtime_open(0.0)
    actions = call.on_realtime_closed("closed by the provider (1011)")
    assert OpenRealtime() in actions and not any(isinstance(a, (EndStream, HangUp)) for a in actions)
    assert not commands(call.on_realtime_open(1.0))  # no second greeting, no session.update
    actions = call.on_realtime_closed("connection lost")
    assert actions == [HangUp("connection lost", abnormal=True)] and not call.ended
    (end, _) = call.on_hung_up("connection lost", abnormal=True)
    assert end.kind == "end" and end.data["abnormal"] is True


def test_a_tool_answered_after_a_sideband_reconnect_keeps_its_call_id(profile):
    """The reopened sideband is the same session: the output goes back as the function's output."""
    from telephony.core.function_tools import FunctionTool

    tool = FunctionTool("python", "check_stock", "Units in stock", {"type": "object", "properties": {}},
                        "tool_functions:check_stock")
    call = begun(replace(profile, function_tools=(tool,)))
    call.on_realtime_open(0.0)
    (run,) = call.on_realtime(rt.FunctionCall("resp_1", "fc", "call_9", "check_stock", "{}"), 0.5)
    assert run.tool is tool  # filled from the profile by begin(): run by the shell, not "unknown tool"
    call.on_realtime_closed("connection lost")
    call.on_realtime_open(1.0)
    (output, *_) = commands(call.on_tool_result("call_9", {"units": 3}, 1.5))
    assert output == rt.AddFunctionOutput("call_9", '{"units":3}')


def test_sideband_decodes_the_sip_only_events():
    assert sideband.decode('{"type":"output_audio_buffer.started","response_id":"r"}') == sideband.AgentAudioStarted("r")
    assert sideband.decode('{"type":"output_audio_buffer.cleared","response_id":"r"}') == \
        sideband.AgentAudioStopped("r", cleared=True)
    assert sideband.decode('{"type":"input_audio_buffer.dtmf_event_received","event":"#","received_at":1}') == \
        sideband.KeypadDigit("#")
    assert isinstance(sideband.decode('{"type":"response.created","response":{"id":"r"}}'), rt.ResponseCreated)
