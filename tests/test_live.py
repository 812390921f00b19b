"""GPT-Live: the dialect against openai.types.live, the core's barge-in without truncate on a fake
clock, and whole calls through the app with the local engine speaking Live, measured from the
simulated phone's recording."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlsplit

import pytest
from conftest import running_app
from fake_twilio import running_fake_twilio
from helpers import active_spans, dominant_freq, simulated_call, ulaw_silence, ulaw_tone, validate_event

from telephony.core.call import Call, Record, ToRealtime, ToTwilio
from telephony.core.pacing import LEAD_MS
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings
from telephony.wire import live
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

API_KEY = "sk-live-test-key-456"


# --- The wire ---


def test_live_url_is_the_sessions_path_without_a_query():
    assert live.url("wss://api.openai.com/v1/live/sessions", "gpt-live-1") == "wss://api.openai.com/v1/live/sessions"
    assert live.url("ws://127.0.0.1:9/v1/realtime?model=x", "gpt-live-1") == "ws://127.0.0.1:9/v1/live/sessions"
    settings = Settings(twilio_validate_signatures=False, realtime_dialect="live")
    assert (settings.realtime_url, settings.realtime_model, settings.audio_codec) == (
        "wss://api.openai.com/v1/live/sessions", "gpt-live-1", "g711_ulaw")
    assert Settings.from_env({"REALTIME_DIALECT": "live", "AUDIO_CODEC": "pcm16"}).audio_codec == "pcm16"


def test_session_start_carries_model_format_voice_and_the_tools_as_delegation():
    tool = rt.Tool("end_call", "Hang up.", {"type": "object", "properties": {}})
    config = rt.SessionConfig("Be brief.", "marin", "g711_ulaw", tools=(tool,), model="gpt-live-1",
                              delegation_model="gpt-5-mini")
    event = live.encode(rt.ConfigureSession(config))
    validate_event(event, "live", "client")
    session = event["session"]
    assert session["audio"] == {"format": {"type": "audio/pcmu", "rate": 8000}, "output": {"voice": "marin"}}
    assert session["model"] == "gpt-live-1"
    delegation = session["delegation"]
    assert delegation["type"] == "responses" and delegation["responses"]["model"] == "gpt-5-mini"
    assert delegation["responses"]["tools"][0] == {"type": "function", "name": "end_call", "description": "Hang up.",
                                                   "parameters": {"type": "object", "properties": {}}}
    pcm = live.encode(rt.ConfigureSession(rt.SessionConfig("x", "marin", "pcm16", model="gpt-live-1")))
    assert pcm["session"]["audio"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert "delegation" not in pcm["session"]  # no tools, no backend
    # The greeting is a commentary worded as an instruction; a tool's result continues the backend.
    greet = live.encode(rt.CreateResponse("Greet the caller by saying exactly this: Hi"))
    assert greet == {"type": "session.commentary.append", "content": "Greet the caller by saying exactly this: Hi",
                     "delegation_id": None}
    assert live.encode(rt.CreateResponse()) == {"type": "response.create"}


SERVER_EVENTS = [
    ({"type": "session.started", "event_id": "e1", "session": {
        "id": "sess_1", "expires_at": 1, "model": "gpt-live-1", "status": "active"}}, rt.SessionReady(True)),
    ({"type": "session.output_audio.delta", "delta": "//8="}, rt.AudioDelta("", "", "//8=")),
    ({"type": "session.input_transcript.delta", "event_id": "e2", "delta": "hello", "start_ms": 100, "end_ms": 400},
     rt.TimedTranscript("caller", "hello", 100, 400)),
    ({"type": "session.output_transcript.delta", "event_id": "e3", "delta": "Hi", "start_ms": 500, "end_ms": 700},
     rt.TimedTranscript("agent", "Hi", 500, 700)),
    ({"type": "response.event", "event_id": "e4", "delegation_id": None, "event": {
        "type": "response.output_item.done", "response_id": "resp_1", "output_index": 0,
        "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "end_call",
                 "arguments": "{}", "status": "completed"}}},
     rt.FunctionCall("resp_1", "fc_1", "call_1", "end_call", "{}")),
    ({"type": "response.event", "event_id": "e5", "event": {"type": "response.output_text.delta", "delta": "x"}},
     rt.Ignored("response.event/response.output_text.delta")),
    ({"type": "session.usage.updated", "event_id": "e6", "usage": {"seconds": 12.0}},
     rt.UsageUpdated({"seconds": 12.0})),
    ({"type": "session.closed", "event_id": "e7", "reason": "close_requested", "usage": {"seconds": 30.0},
      "session": {"id": "sess_1", "expires_at": 1, "model": "gpt-live-1", "status": "active"}},
     rt.UsageUpdated({"seconds": 30.0, "reason": "close_requested"}, final=True)),
    ({"type": "error", "event_id": "e8", "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                                                  "message": "no", "client_event_id": "c1"}},
     rt.RealtimeError("invalid_request_error", "unknown_parameter", "no", "c1")),
    ({"type": "session.commentary.appended", "event_id": "e9", "start_ms": 0, "end_ms": 0},
     rt.Ignored("session.commentary.appended")),
]


@pytest.mark.parametrize("event,expected", SERVER_EVENTS, ids=[e["type"] for e, _ in SERVER_EVENTS])
def test_each_live_server_event_decodes_to_the_neutral_vocabulary(event, expected):
    validate_event(event, "live", "server")  # the fixture itself is what the openai models describe
    assert live.decode(json.dumps(event)) == expected


def test_realtime_names_are_unknown_to_live():
    assert isinstance(live.decode('{"type":"response.audio.delta","delta":"AA=="}'), rt.Unknown)
    with pytest.raises(rt.RealtimeProtocolError):
        live.decode("not json")


# --- The core on a fake clock ---

TONE_FRAME = base64.b64encode(ulaw_tone(500, 0.02)).decode()
QUIET_FRAME = base64.b64encode(ulaw_silence(0.02)).decode()


def live_call(profile) -> Call:
    call = Call(profile, "g711_ulaw", capabilities=live.capabilities, model="gpt-live-1", delegation_model="m")
    call.on_twilio(tw.Start("MZ1", "CA1"), 0.0)
    return call


def commands(actions, kind=None):
    return [a.command for a in actions if isinstance(a, ToRealtime) and (kind is None or isinstance(a.command, kind))]


def media_ms(actions) -> float:
    return sum(len(base64.b64decode(a.message.payload)) / 8 for a in actions
               if isinstance(a, ToTwilio) and isinstance(a.message, tw.SendMedia))


def records(actions, kind):
    return [a.data for a in actions if isinstance(a, Record) and a.kind == kind]


def ready_call(profile) -> Call:
    call = live_call(profile)
    call.on_realtime_open(0.0)
    call.on_realtime(rt.SessionReady(True), 0.0)
    return call


def test_nothing_but_session_start_until_the_session_has_started(profile):
    call = live_call(profile)
    call.on_twilio(tw.Media(QUIET_FRAME), 0.0)
    opened = call.on_realtime_open(0.01)
    (start,) = commands(opened)
    assert isinstance(start, rt.ConfigureSession) and start.config.model == "gpt-live-1"
    assert commands(call.on_twilio(tw.Media(QUIET_FRAME), 0.02)) == []  # held until started
    ready = commands(call.on_realtime(rt.SessionReady(True), 0.05))
    assert isinstance(ready[0], rt.CreateResponse) and profile.greeting in ready[0].instructions
    assert [type(c) for c in ready[1:]] == [rt.AppendAudio, rt.AppendAudio]  # the early audio, in order
    assert isinstance(commands(call.on_twilio(tw.Media(QUIET_FRAME), 0.06))[0], rt.AppendAudio)


def test_agent_audio_is_paced_to_real_time_plus_the_lead(profile):
    call = ready_call(profile)
    second = base64.b64encode(ulaw_tone(440, 1.0)).decode()  # faster than real time: 1 s at once
    sent = media_ms(call.on_realtime(rt.AudioDelta("", "", second), 0.0))
    assert LEAD_MS - 40 <= sent <= LEAD_MS
    now = 0.0
    while now < 0.8:  # until all of it is out (at 0.8 s)
        now = round(now + 0.05, 2)
        sent += media_ms(call.on_tick(now))
        queued = sent - now * 1000  # what Twilio still has to play
        assert LEAD_MS - 60 <= queued <= LEAD_MS, (now, queued)
    sent += media_ms(call.on_tick(1.0))
    assert sent == 1000.0  # everything goes out in the end


def test_caller_talking_over_queued_audio_clears_it_and_mutes_the_tail(profile):
    call = ready_call(profile)
    call.on_realtime(rt.AudioDelta("", "", base64.b64encode(ulaw_tone(440, 2.0)).decode()), 0.0)
    call.on_tick(0.25)
    one = call.on_twilio(tw.Media(TONE_FRAME), 0.30)  # a click is not speech
    assert not [a for a in one if isinstance(a, ToTwilio) and isinstance(a.message, tw.SendClear)]
    call.on_twilio(tw.Media(QUIET_FRAME), 0.32)
    call.on_twilio(tw.Media(TONE_FRAME), 0.34)
    actions = call.on_twilio(tw.Media(TONE_FRAME), 0.36)
    assert [a.message for a in actions if isinstance(a, ToTwilio)][0] == tw.SendClear()
    (barge,) = records(actions, "barge_in")
    assert barge["cause"] == "caller_speech" and barge["dropped_ms"] >= 1500
    assert not commands(actions, rt.TruncateItem) and not commands(actions, rt.CancelResponse)  # Live has none
    # The interrupted utterance's tail, still arriving while the caller talks, is dropped...
    assert media_ms(call.on_realtime(rt.AudioDelta("", "", base64.b64encode(ulaw_tone(440, 0.1)).decode()), 0.4)) == 0
    now = 0.36
    for _ in range(16):  # ...until the caller has been quiet for the VAD's 300 ms
        now = round(now + 0.02, 2)
        call.on_twilio(tw.Media(QUIET_FRAME), now)
    assert media_ms(call.on_realtime(rt.AudioDelta("", "", base64.b64encode(ulaw_tone(660, 0.1)).decode()), now)) == 100


def test_the_server_hearing_the_caller_over_the_agent_clears_what_is_queued(profile):
    call = ready_call(profile)
    for i in range(50):  # 1 s of caller silence: the session timeline is at 1000 ms
        call.on_twilio(tw.Media(QUIET_FRAME), i * 0.02)
    # A late fragment of the caller's previous turn is not a barge-in...
    call.on_realtime(rt.AudioDelta("", "", base64.b64encode(ulaw_tone(440, 2.0)).decode()), 1.0)
    late = call.on_realtime(rt.TimedTranscript("caller", "earlier words", 200, 800), 1.05)
    assert not records(late, "barge_in")
    # ...a fragment spoken after the agent's audio began is: the server stops for it by itself.
    for i in range(10):
        call.on_twilio(tw.Media(QUIET_FRAME), 1.0 + i * 0.02)
    actions = call.on_realtime(rt.TimedTranscript("caller", "wait", 1050, 1200), 1.2)
    assert [a.message for a in actions if isinstance(a, ToTwilio)] == [tw.SendClear()]
    assert records(actions, "barge_in")[0]["cause"] == "server_heard_caller"
    assert media_ms(call.on_tick(1.3)) == 0  # nothing held is left to play


def test_timed_transcripts_become_turns_split_by_pauses_and_speakers(profile):
    call = ready_call(profile)
    out = []
    for speaker, text, start, end, now in [("agent", "Hello, ", 0, 400, 0.1), ("agent", "how can I help?", 400, 900, 0.2),
                                           ("caller", "I need ", 1500, 1900, 1.9), ("caller", "a table.", 1900, 2300, 2.3),
                                           ("caller", "For two.", 3500, 3900, 3.9)]:
        out += call.on_realtime(rt.TimedTranscript(speaker, text, start, end), now)
    turns = records(out, "transcript")
    assert [(t["speaker"], t["text"], t["start_ms"], t["end_ms"]) for t in turns] == [
        ("agent", "Hello, how can I help?", 0, 900), ("caller", "I need a table.", 1500, 2300)]
    for i in range(250):  # the timeline moves on with the caller's audio: 5 s, past 3.9 s + the gap
        out = call.on_twilio(tw.Media(QUIET_FRAME), 4.0 + i * 0.02)
    (last,) = records(call.on_tick(8.0), "transcript")
    assert (last["speaker"], last["text"]) == ("caller", "For two.")


def test_usage_is_recorded_and_a_delegated_tool_call_is_answered_the_live_way(profile):
    call = ready_call(profile)
    (usage,) = records(call.on_realtime(rt.UsageUpdated({"seconds": 12.0}), 1.0), "usage")
    assert usage == {"seconds": 12.0, "final": False}
    call_event = live.decode(json.dumps({"type": "response.event", "event_id": "e", "event": {
        "type": "response.output_item.done", "item": {"type": "function_call", "id": "fc", "call_id": "call_9",
                                                      "name": "end_call", "arguments": "{}"}}}))
    actions = call.on_realtime(call_event, 1.0)
    wire = [live.encode(c) for c in commands(actions)]
    assert [e["type"] for e in wire] == ["response.item.create", "response.create"]
    assert wire[0]["item"]["call_id"] == "call_9" and json.loads(wire[0]["item"]["output"])["ok"] is True
    for event in wire:
        validate_event(event, "live", "client")


# --- Whole calls: the app, the local engine speaking Live, a simulated phone ---


def live_settings(server, tmp_path, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False,
                    realtime_url=server.url, realtime_api_key=API_KEY, realtime_dialect="live",
                    call_records_dir=tmp_path, **overrides)


def call_records(tmp_path) -> list[dict]:
    (path,) = tmp_path.glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def server_stopped_at(conn) -> float:
    """When the engine stopped talking over the caller, in seconds of the caller's audio: the
    session timeline is the caller's audio, and its transcript fragment ends at the stop."""
    (fragment,) = [e for e in conn.sent if e["type"] == "session.input_transcript.delta"
                   and e["delta"].startswith("[talking over")]
    return fragment["end_ms"] / 1000


@pytest.mark.parametrize("codec", ["g711_ulaw", "pcm16"])
async def test_live_barge_in_stops_the_agent_on_the_phone_within_300_ms(tmp_path, codec):
    # Deltas at 2x real time: the greeting is generated well ahead of playback.
    script = Script(response_ms=3000, speed=2.0)
    caller = ulaw_silence(1.0) + ulaw_tone(500, 0.6) + ulaw_silence(2.6)
    async with ScriptedRealtimeServer(script, dialect="live") as server, \
            running_app(live_settings(server, tmp_path, audio_codec=codec)) as (app, host):
        result = await simulated_call(app, host, caller_audio=caller).run()
    (conn,) = server.connections
    assert urlsplit(conn.path).path == "/v1/live/sessions" and not urlsplit(conn.path).query
    assert conn.headers["authorization"] == f"Bearer {API_KEY}"
    for event in conn.received:
        validate_event(event, "live", "client")
    for event in conn.sent:
        validate_event(event, "live", "server")
    types = conn.received_types()
    assert types[0] == "session.start" and types[1] == "session.commentary.append"
    fmt = conn.received[0]["session"]["audio"]["format"]
    assert fmt == ({"type": "audio/pcmu", "rate": 8000} if codec == "g711_ulaw" else {"type": "audio/pcm", "rate": 24000})
    if codec == "g711_ulaw":  # passthrough: the caller's bytes reach the model untouched
        sent = b"".join(base64.b64decode(e["audio"]) for e in conn.of_type("session.input_audio.append"))
        assert sent[:len(result.caller)] == result.caller[:len(sent)]

    # Measured on the phone's recording: the greeting (440 Hz) stops soon after the caller's 1.0 s.
    spans = active_spans(result.agent)
    (g_start, g_end), (r_start, r_end) = spans[0], spans[-1]
    assert dominant_freq(result.agent[int(g_start * 8000):int(g_end * 8000)]) == pytest.approx(440, abs=5)
    assert g_end - 1.0 <= 0.3, g_end
    assert g_end - server_stopped_at(conn) <= 0.2  # stale audio heard after the server stopped
    (clear,) = [e for e in result.timeline if e.kind == "clear"]
    assert clear.detail["dropped_ms"] <= 200 + 40  # Twilio never held more than the lead (+ one piece)
    # The answer (660 Hz) is heard whole, and nothing of the greeting after it.
    assert dominant_freq(result.agent[int(r_start * 8000):int(r_end * 8000)]) == pytest.approx(660, abs=5)
    assert r_end - r_start == pytest.approx(3.0, abs=0.06)
    barge = [r for r in call_records(tmp_path) if r["kind"] == "barge_in"]
    assert [b["cause"] for b in barge] == ["caller_speech"]


async def test_live_barge_in_the_server_hears_and_our_vad_does_not(tmp_path):
    # A quiet caller (RMS ~350): under our VAD's 500, over the engine's 200. The engine stops
    # 200 ms into the speech; its transcript fragment is all the bridge learns, and enough.
    script = Script(response_ms=3000, speed=2.0, vad_threshold_rms=200)
    caller = ulaw_silence(1.0) + ulaw_tone(500, 0.8, amplitude=500) + ulaw_silence(2.4)
    async with ScriptedRealtimeServer(script, dialect="live") as server, \
            running_app(live_settings(server, tmp_path)) as (app, host):
        result = await simulated_call(app, host, caller_audio=caller).run()
    (conn,) = server.connections
    spans = active_spans(result.agent)
    g_end = spans[0][1]
    stopped = server_stopped_at(conn)
    assert 1.15 <= stopped <= 1.3
    assert g_end - stopped <= 0.2, (g_end, stopped)
    barge = [r for r in call_records(tmp_path) if r["kind"] == "barge_in"]
    assert [b["cause"] for b in barge] == ["server_heard_caller"]


async def test_live_end_call_goes_through_delegation_and_hangs_up_after_the_goodbye(tmp_path):
    from test_outbound import settings as twilio_settings

    # Response 0 greets; the caller answers; response 1 says goodbye and calls end_call.
    script = Script(response_ms=600, speed=5.0, response_lengths={1: 1500},
                    tool_calls={1: ("end_call", '{"reason": "done"}')})
    caller = ulaw_silence(0.9) + ulaw_tone(500, 0.4)
    async with running_fake_twilio() as fake, ScriptedRealtimeServer(script, dialect="live") as server:
        settings = twilio_settings(fake, server.url, realtime_dialect="live", call_records_dir=tmp_path)
        async with running_app(settings) as (app, host):
            sim = simulated_call(app, host, caller_audio=caller, duration_s=6.0)
            result = await sim.run()
    (conn,) = server.connections
    for event in conn.received:
        validate_event(event, "live", "client")
    for event in conn.sent:
        validate_event(event, "live", "server")
    tools = conn.received[0]["session"]["delegation"]["responses"]["tools"]
    assert {t["name"] for t in tools} >= {"end_call"}
    (output,) = conn.of_type("response.item.create")
    assert json.loads(output["item"]["output"])["ok"] is True
    assert conn.received_types().index("response.create") > conn.received_types().index("response.item.create")
    (sid, form, _) = fake.updates[0]
    assert sid == sim.call_sid and form == {"Status": "completed"}
    lines = call_records(tmp_path)
    assert [r["name"] for r in lines if r["kind"] == "tool_call"] == ["end_call"]
    turns = [r for r in lines if r["kind"] == "transcript"]
    assert [t["speaker"] for t in turns][:3] == ["agent", "caller", "agent"]
    assert "500 Hz tone" in turns[1]["text"]
    assert any(r["kind"] == "usage" for r in lines)
    assert result.agent  # the goodbye was heard


def test_a_reconnected_live_session_waits_for_started_then_hears_the_turns_so_far(profile):
    call = ready_call(profile)
    call.on_realtime(rt.TimedTranscript("caller", "Book a table.", 1000, 1800), 1.8)
    call.on_realtime(rt.TimedTranscript("agent", "For how many?", 2000, 2600), 2.6)  # closes the caller turn
    assert commands(call.on_realtime_closed("connection lost")) == []
    (start,) = commands(call.on_realtime_open(3.0))
    assert isinstance(start, rt.ConfigureSession)
    restored = commands(call.on_realtime(rt.SessionReady(True), 3.1))
    assert restored[0] == rt.AddUserText("Book a table.")
    assert not [c for c in restored if isinstance(c, rt.CreateResponse)]  # no second greeting
    for command in restored:
        validate_event(live.encode(command), "live", "client")


async def test_the_local_engine_speaks_live_on_the_live_path():
    import websockets

    from telephony.offline.local_realtime import RealtimeServer
    from telephony.offline.voices import make_voice

    async with RealtimeServer(make_voice("synth")) as server:
        url = server.url.replace("/v1/realtime", "/v1/live/sessions")
        async with websockets.connect(url) as ws:
            start = live.encode(rt.ConfigureSession(rt.SessionConfig("Be brief.", "marin", "g711_ulaw",
                                                                     model="gpt-live-1")))
            await ws.send(json.dumps(start))
            started = json.loads(await ws.recv())
            await ws.send(json.dumps(live.encode(rt.CreateResponse("Say exactly this: Hello there."))))
            events = [json.loads(await ws.recv()) for _ in range(4)]
    assert started["type"] == "session.started" and started["session"]["model"] == "gpt-live-1"
    for event in [started, *events]:
        validate_event(event, "live", "server")
    assert events[0]["type"] == "session.commentary.appended"
    assert {e["type"] for e in events[1:]} <= {"session.output_audio.delta", "session.output_transcript.delta"}


def test_a_session_that_never_starts_ends_the_call_for_the_fallback(profile):
    from telephony.core.call import SESSION_START_TIMEOUT_S, EndStream

    call = live_call(profile)
    call.on_realtime_open(1.0)
    assert call.on_tick(1.0 + SESSION_START_TIMEOUT_S - 0.1) == []
    ended = call.on_tick(1.0 + SESSION_START_TIMEOUT_S + 0.1)
    assert any(isinstance(a, EndStream) and a.abnormal for a in ended)


LIVE_BAD = {
    "unknown_type": (json.dumps({"type": "session.brand_new", "event_id": "e"}), "not known to the live dialect"),
    "malformed_json": ("{not json", "bad Realtime message: not JSON"),
    "error_event": (json.dumps({"type": "error", "event_id": "e", "error": {
        "type": "invalid_request_error", "code": "unknown_parameter", "message": "That was wrong",
        "client_event_id": "evt_client_7"}}), "(event evt_client_7): That was wrong"),
    "nested_garbage": (json.dumps({"type": "response.event", "event_id": "e", "event": "not an object"}), None),
    "transcript_without_times": (json.dumps({"type": "session.input_transcript.delta", "delta": "x"}), None),
}


@pytest.mark.parametrize("case", list(LIVE_BAD))
async def test_bad_live_message_mid_call_is_logged_and_audio_still_flows(case, caplog, tmp_path):
    import logging

    text, expected = LIVE_BAD[case]
    script = Script(respond_to_turns=False, inject=((10, text),))
    caller = ulaw_silence(0.5) + ulaw_tone(500, 0.7)
    async with ScriptedRealtimeServer(script, dialect="live") as server, \
            running_app(live_settings(server, tmp_path)) as (app, host):
        sim = simulated_call(app, host, caller_audio=caller, duration_s=1.2)
        with caplog.at_level(logging.INFO):
            result = await sim.run()
    assert result.closed_by_bridge_at is None  # the call went on
    appends = server.connections[0].of_type("session.input_audio.append")
    assert len(appends) == 60  # every caller frame reached the model, after the bad message too
    if expected:
        lines = [r.getMessage() for r in caplog.records if expected in r.getMessage()]
        assert lines and all(f"call {sim.call_sid}" in line for line in lines), caplog.text


def test_end_call_waits_for_the_agents_last_words_though_live_has_no_response_done(profile):
    from telephony.core.call import QUIET_BEFORE_AFTER_PLAYOUT_S, HangUp

    call = ready_call(profile)
    call.on_realtime(rt.FunctionCall("", "fc", "call_1", "end_call", "{}"), 1.0)
    assert not [a for a in call.on_tick(1.5) if isinstance(a, HangUp)]
    # The backend's goodbye arrives after the tool result: it is heard before the hang-up.
    actions = call.on_realtime(rt.AudioDelta("", "", base64.b64encode(ulaw_tone(440, 0.5)).decode()), 1.6)
    now, hung_up_at = 1.6, None
    while hung_up_at is None and now < 5.0:
        for action in actions:  # grows while it is walked: a mark's echo may hang up
            if isinstance(action, ToTwilio) and isinstance(action.message, tw.SendMark):
                actions += call.on_twilio(tw.Mark(action.message.name), now)  # echoed as it is sent
            if isinstance(action, HangUp):
                hung_up_at = now
        now = round(now + 0.05, 2)
        actions = call.on_tick(now)
    assert not call.pacer.holding
    assert 1.6 + QUIET_BEFORE_AFTER_PLAYOUT_S <= hung_up_at <= 1.6 + QUIET_BEFORE_AFTER_PLAYOUT_S + 0.1


async def test_a_business_tool_runs_through_live_delegation_unchanged(tmp_path):
    """Issue 15's HTTP tool, called by the Live backend: the same neutral FunctionCall reaches the
    core, the bridge calls the webhook, and the output goes back the Live way."""
    from test_tools import HTTP_TOOL, function_outputs, greeting_then_tool, run_call, tool_server, write_profile

    async with tool_server() as tools:
        profile = write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url=tools.url, timeout=5))
        conn, sim, _, metrics = await run_call(profile, greeting_then_tool("lookup_order", '{"order": "A-17"}'),
                                               "live")
    for event in conn.received:
        validate_event(event, "live", "client")
    for event in conn.sent:
        validate_event(event, "live", "server")
    declared = {t["name"] for t in conn.received[0]["session"]["delegation"]["responses"]["tools"]}
    assert declared == {"end_call", "lookup_order"}
    assert json.loads(tools.requests[0][1])["arguments"] == {"order": "A-17"}
    assert function_outputs(conn) == []  # not Realtime's conversation.item.create...
    (output,) = conn.of_type("response.item.create")  # ...but Live's, then response.create
    assert json.loads(output["item"]["output"]) == {"status": "shipped", "eta": "Tuesday"}
    types = conn.received_types()
    assert types.index("response.create") > types.index("response.item.create")
    assert 'telephony_tool_calls_total{outcome="ok",tool="lookup_order"} 1.0' in metrics
