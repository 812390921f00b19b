"""Business tools in the call core, with a fake clock: validation, the RunTool action, the
answer to the model, and the one holding phrase of a slow tool."""

from __future__ import annotations

import json
from dataclasses import replace

from telephony.core.actions import Record, RunTool, ToRealtime
from telephony.core.call import Call
from telephony.core.function_tools import FunctionTool
from telephony.core.tool_calls import FILLER_INSTRUCTIONS
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

LOOKUP = FunctionTool("http", "lookup_order", "Find an order",
                      {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
                      "https://example.com/hooks/lookup_order", 5.0)


def commands(actions, kind):
    return [a.command for a in actions if isinstance(a, ToRealtime) and isinstance(a.command, kind)]


def records(actions, kind):
    return [a.data for a in actions if isinstance(a, Record) and a.kind == kind]


def call_with_tool(profile, filler_after_ms=1500) -> Call:
    call = Call(replace(profile, function_tools=(LOOKUP,), filler_after_ms=filler_after_ms))
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    config = commands(call.on_realtime_open(0.0), rt.ConfigureSession)[0].config
    assert "lookup_order" in [t.name for t in config.tools]
    return call


def model_calls(call: Call, arguments: str, now: float, response: str = "r1") -> list:
    call.on_realtime(rt.ResponseCreated(response), now)
    actions = call.on_realtime(rt.FunctionCall(response, "fc1", "c1", "lookup_order", arguments), now)
    return actions + call.on_realtime(rt.ResponseDone(response, "completed"), now)


def test_a_valid_call_asks_the_shell_to_run_the_tool_and_its_output_answers_the_model(profile):
    call = call_with_tool(profile)
    actions = model_calls(call, '{"order": "A-17"}', 1.0)
    assert [a for a in actions if isinstance(a, RunTool)] == [RunTool("c1", LOOKUP, {"order": "A-17"})]
    assert not commands(actions, rt.AddFunctionOutput) and not commands(actions, rt.CreateResponse)
    actions = call.on_tool_result("c1", {"status": "shipped"}, 1.25)
    assert commands(actions, rt.AddFunctionOutput) == [rt.AddFunctionOutput("c1", '{"status":"shipped"}')]
    assert commands(actions, rt.CreateResponse) == [rt.CreateResponse(None)]
    assert records(actions, "tool_call") == [{"name": "lookup_order", "arguments": {"order": "A-17"},
                                              "output": {"status": "shipped"}, "outcome": "ok",
                                              "latency_ms": 250.0}]
    assert call.on_tool_result("c1", {"status": "again"}, 1.3) == []  # answered once


def test_arguments_that_break_the_schema_are_refused_without_running_the_tool(profile):
    call = call_with_tool(profile)
    actions = model_calls(call, '{"order": 17}', 1.0)
    assert not [a for a in actions if isinstance(a, RunTool)]
    (output,) = commands(actions, rt.AddFunctionOutput)
    assert json.loads(output.output) == {"error": "invalid arguments: order: 17 is not of type 'string'"}
    assert commands(actions, rt.CreateResponse)  # so the model can try again or tell the caller
    assert records(actions, "tool_call")[0]["outcome"] == "invalid_arguments"


def test_a_slow_tool_gets_one_holding_phrase_once_the_agent_is_quiet(profile):
    call = call_with_tool(profile, filler_after_ms=1000)
    call.on_realtime(rt.ResponseCreated("r1"), 0.0)
    call.on_realtime(rt.FunctionCall("r1", "fc1", "c1", "lookup_order", '{"order": "A-17"}'), 0.0)
    assert not commands(call.on_tick(0.9), rt.CreateResponse)
    assert not commands(call.on_tick(1.1), rt.CreateResponse)  # the agent is still speaking
    call.on_realtime(rt.ResponseDone("r1", "completed"), 1.2)
    assert commands(call.on_tick(1.25), rt.CreateResponse) == [rt.CreateResponse(FILLER_INSTRUCTIONS)]
    call.on_realtime(rt.ResponseCreated("r2"), 1.3)
    # The output arrives while the holding phrase is spoken: the model answers after it.
    actions = call.on_tool_result("c1", {"status": "shipped"}, 1.5)
    assert commands(actions, rt.AddFunctionOutput) and not commands(actions, rt.CreateResponse)
    assert commands(call.on_realtime(rt.ResponseDone("r2", "completed"), 1.8), rt.CreateResponse)
    assert not any(commands(call.on_tick(t), rt.CreateResponse) for t in (2.0, 5.0, 9.0))


def test_an_error_from_the_shell_is_recorded_as_its_outcome(profile):
    call = call_with_tool(profile)
    model_calls(call, '{"order": "A-17"}', 1.0)
    actions = call.on_tool_result("c1", {"error": "the tool did not answer within 5 s"}, 6.0, "timeout")
    (output,) = commands(actions, rt.AddFunctionOutput)
    assert json.loads(output.output) == {"error": "the tool did not answer within 5 s"}
    (record,) = records(actions, "tool_call")
    assert record["outcome"] == "timeout" and record["error"] == "the tool did not answer within 5 s"


def test_an_empty_greeting_parameter_means_the_agent_does_not_speak_first(profile):
    call = Call(profile)
    call.on_twilio(tw.Start("MZ1", "CA1", custom_parameters={"silent_start": "1"}), 0.0)
    assert not commands(call.on_realtime_open(0.0), rt.CreateResponse)


def test_an_output_after_a_reconnect_reaches_the_new_session_as_text(profile):
    call = call_with_tool(profile)
    model_calls(call, '{"order": "A-17"}', 1.0)
    call.on_realtime_closed("dropped")
    call.on_realtime_open(1.5)
    actions = call.on_tool_result("c1", {"status": "shipped"}, 2.0)
    assert not commands(actions, rt.AddFunctionOutput)
    (text,) = commands(actions, rt.AddUserText)
    assert "lookup_order" in text.text and '{"status":"shipped"}' in text.text
