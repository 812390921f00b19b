"""Bad input from either side, each sent mid-call through real sockets; the call goes on."""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
import logging
import time

import pytest
from conftest import running_app
from helpers import simulated_call, ulaw_silence, ulaw_tone

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings

API_KEY = "sk-test-secret-key-123"
FRAMES = 60  # 1.2 s of caller audio, 20 ms a frame
BAD_AT = 0.4  # seconds into the call
CALLER = ulaw_silence(BAD_AT + 0.1) + ulaw_tone(500, FRAMES * 0.02 - BAD_AT - 0.1)


def frame(payload: str, stream_sid: str | None) -> str:
    msg = {"event": "media", "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload}}
    if stream_sid:
        msg["streamSid"] = stream_sid
    return json.dumps(msg)


# name → (raw message given the stream sid, log text expected, extra appends it causes)
TWILIO_CASES = {
    "non_json": (lambda sid: "this is not json", "bad Twilio message: not JSON", 0),
    "binary": (lambda sid: b"\x00\x01\x02", "bad Twilio message: binary frame", 0),
    "unknown_event": (lambda sid: json.dumps({"event": "wiggle", "streamSid": sid}),
                      'Twilio event ignored: {"event": "wiggle"', 0),
    "no_event": (lambda sid: json.dumps({"streamSid": sid}), "message without an 'event' name", 0),
    "missing_stream_sid": (lambda sid: frame("//8=", None), "media without 'streamSid'", 0),
    "other_stream_sid": (lambda sid: frame("//8=", "MZother"), "media for another stream (MZother)", 0),
    "missing_media": (lambda sid: json.dumps({"event": "media", "streamSid": sid}),
                      "'media' message without a 'media' object", 0),
    "missing_payload": (lambda sid: json.dumps({"event": "media", "streamSid": sid, "media": {"track": "inbound"}}),
                        "media without a 'payload' string", 0),
    "invalid_base64": (lambda sid: frame("not*base64!", sid), "media payload is not base64", 0),
    "odd_length_base64": (lambda sid: frame("//8", sid), "media payload is not base64", 0),
    "empty_payload": (lambda sid: frame("", sid), "empty media payload dropped", 0),
    # Three μ-law bytes are odd but valid audio: forwarded, the call goes on.
    "odd_length_audio": (lambda sid: frame(base64.b64encode(b"\xff\xff\xff").decode(), sid), None, 1),
    "second_start": (lambda sid: json.dumps({"event": "start", "streamSid": "MZsecond", "start": {
        "streamSid": "MZsecond", "callSid": "CAsecond", "accountSid": "AC1", "tracks": ["inbound"],
        "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                "channels": 1}}}), "second start (stream MZsecond) ignored", 0),
    "start_without_call_sid": (lambda sid: json.dumps({"event": "start", "start": {"streamSid": sid}}),
                               "start without 'callSid'", 0),
    "mark_never_sent": (lambda sid: json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "bogus"}}),
                        "echoed mark 'bogus', which we never sent", 0),
    "mark_without_name": (lambda sid: json.dumps({"event": "mark", "streamSid": sid, "mark": {}}),
                          "mark without 'name'", 0),
    "oversized": (lambda sid: frame("A" * 100_000, sid), "over the 65536-byte limit", 0),
    "json_array": (lambda sid: "[1, 2, 3]", "JSON that is not an object", 0),
}


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key=API_KEY, **overrides)


async def closed(server: ScriptedRealtimeServer, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.closed for c in server.connections) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def loud(append: dict) -> bool:
    return audioop.rms(base64.b64decode(append["audio"]), 2) > 1000


def assert_audio_flowed(conn, extra: int = 0) -> None:
    """Every caller frame reached the model, and the tone after the bad message with it."""
    appends = conn.of_type("input_audio_buffer.append")
    assert len(appends) == FRAMES + extra
    assert all(loud(a) for a in appends[-10:])  # the tone sent after the bad message


@pytest.mark.parametrize("case", list(TWILIO_CASES))
async def test_bad_twilio_message_mid_call_is_logged_and_audio_still_flows(case, caplog):
    make, expected, extra = TWILIO_CASES[case]
    script = Script(respond_to_turns=False)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=CALLER, duration_s=FRAMES * 0.02)
        sim.extra = [(BAD_AT, make(sim.stream_sid))]
        with caplog.at_level(logging.INFO):
            result = await sim.run()
        await closed(server)
    assert result.closed_by_bridge_at is None  # the call went on until the caller hung up
    (conn,) = server.connections
    assert_audio_flowed(conn, extra)
    if expected:
        lines = [r.getMessage() for r in caplog.records if expected in r.getMessage()]
        assert lines, caplog.text
        assert all(f"call {sim.call_sid}" in line for line in lines), lines


async def test_media_before_start_is_dropped_and_the_call_starts_normally(caplog):
    async with ScriptedRealtimeServer(Script(respond_to_turns=False)) as server, \
            running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=CALLER, duration_s=FRAMES * 0.02)
        sim.before_start = [frame("//8=", sim.stream_sid)]
        result = await sim.run()
        await closed(server)
    assert result.closed_by_bridge_at is None
    assert_audio_flowed(server.connections[0])
    assert "media before start dropped" in caplog.text


async def test_start_with_another_audio_format_ends_the_call_without_upstream(caplog):
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(2.0),
                             media_format={"encoding": "audio/l16", "sampleRate": 16000, "channels": 1})
        result = await sim.run()
    assert result.closed_by_bridge_at is not None and result.closed_by_bridge_at < 0.5
    assert server.connections == []
    assert f"call {sim.call_sid}: unsupported media format audio/l16/16000/1" in caplog.text


async def test_message_over_the_servers_hard_limit_closes_with_1009():
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(2.0))
        sim.extra = [(0.2, frame("A" * (2 << 20), sim.stream_sid))]  # past uvicorn's ws_max_size
        result = await sim.run()
    assert result.close_code == 1009 and result.closed_by_bridge_at < 1.0
    assert app.state.active_calls == set()


# --- The Realtime side ---


def delta(kind: str, **fields) -> str:
    return json.dumps({"type": kind, "event_id": "event_x", **fields})


REALTIME_CASES = {
    "unknown_types": ((delta("response.brand_new.thing"), delta("response.brand_new.thing"),
                       delta("other.new.thing")), "not known to the beta dialect"),
    "malformed_json": (("{not json",), "bad Realtime message: not JSON"),
    "no_type": (('{"event_id": "e1"}',), "bad Realtime message: message without a 'type'"),
    "error_event": ((delta("error", error={"type": "invalid_request_error", "code": "bad_thing",
                                          "message": "That was wrong", "event_id": "evt_client_7"}),),
                    "(event evt_client_7): That was wrong"),
    "audio_for_unknown_item": ((delta("response.audio.delta", response_id="resp_ghost", item_id="item_ghost",
                                      output_index=0, content_index=0,
                                      delta=base64.b64encode(b"\x00\x00" * 480).decode()),),
                               "audio for item 'item_ghost' of response 'resp_ghost', which was never announced"),
    "transcript_for_unknown_item": ((delta("response.audio_transcript.delta", response_id="resp_ghost",
                                           item_id="item_ghost", output_index=0, content_index=0,
                                           delta="boo"),), None),
    "binary_garbage": (("\x00\x01\x02",), "bad Realtime message: not JSON"),
}


@pytest.mark.parametrize("case", list(REALTIME_CASES))
async def test_bad_realtime_message_mid_call_is_logged_and_audio_still_flows(case, caplog):
    messages, expected = REALTIME_CASES[case]
    script = Script(respond_to_turns=False, inject=tuple((10, m) for m in messages))
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=CALLER, duration_s=FRAMES * 0.02)
        with caplog.at_level(logging.INFO):
            result = await sim.run()
        await closed(server)
    assert result.closed_by_bridge_at is None
    (conn,) = server.connections
    assert_audio_flowed(conn)
    if expected:
        lines = [r.getMessage() for r in caplog.records if expected in r.getMessage()]
        assert len(lines) == (2 if case == "unknown_types" else 1), caplog.text  # once per type
        assert all(f"call {sim.call_sid}" in line for line in lines), lines


async def test_fatal_realtime_error_ends_the_stream_so_the_fallback_speaks(caplog):
    error = delta("error", error={"type": "server_error", "code": None, "message": "The server broke",
                                  "event_id": None})
    async with ScriptedRealtimeServer(Script(respond_to_turns=False, inject=((10, error),))) as server, \
            running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(3.0), hang_up=False)
        result = await sim.run()
        await closed(server)
    assert result.closed_by_bridge_at is not None and result.closed_by_bridge_at < 1.0
    assert server.connections[0].closed
    assert f"call {sim.call_sid}: Realtime error server_error" in caplog.text
