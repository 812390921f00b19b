"""Every Realtime dialect encodes every command it has into events its openai models accept."""

from __future__ import annotations

import pytest
from helpers import validate_event

from telephony.wire import realtime as rt
from telephony.wire import live, realtime_beta, realtime_ga
from telephony.wire.realtime import Tool

DIALECTS = {"beta": realtime_beta, "ga": realtime_ga, "live": live}
# Live has no transcription sessions, commit, cancel or truncate: the core never asks them of it.
LIVE_HAS_NO = (rt.ConfigureTranscription, rt.CommitAudio, rt.CancelResponse, rt.TruncateItem)

TOOL = Tool("end_call", "Hang up after saying goodbye.", {"type": "object", "properties": {}})


def commands(audio_format: str) -> list[rt.Command]:
    config = rt.SessionConfig(instructions="Be brief.", voice="alloy", audio_format=audio_format,
                              transcription_model="whisper-1", tools=(TOOL,), model="gpt-live-1",
                              delegation_model="gpt-5-mini")
    return [
        rt.ConfigureSession(config),
        rt.ConfigureTranscription(rt.TranscriptionConfig(model="whisper-1", audio_format=audio_format,
                                                         language="en")),
        rt.AppendAudio("AAAA"),
        rt.CommitAudio(),
        rt.CreateResponse(),
        rt.CreateResponse("Say hello."),
        rt.CancelResponse(),
        rt.CancelResponse("resp_1"),
        rt.TruncateItem("item_1", 1234),
        rt.AddUserText("The caller pressed 5 on the keypad."),
        rt.AddAssistantText("Hello, how can I help?"),
        rt.AddFunctionOutput("call_1", '{"ok": true}'),
    ]


@pytest.mark.parametrize("dialect", ["beta", "ga", "live"])
@pytest.mark.parametrize("audio_format", ["pcm16", "g711_ulaw"])
def test_every_command_validates_against_the_dialects_model(dialect, audio_format):
    for command in commands(audio_format):
        if dialect == "live" and isinstance(command, LIVE_HAS_NO):
            with pytest.raises(ValueError, match="no counterpart"):
                live.encode(command)
            continue
        validate_event(DIALECTS[dialect].encode(command), dialect, "client")


def test_session_shapes_differ_as_the_protocols_do():
    config = rt.SessionConfig(instructions="x", voice="coral", audio_format="g711_ulaw")
    beta = realtime_beta.encode(rt.ConfigureSession(config))["session"]
    assert beta["input_audio_format"] == beta["output_audio_format"] == "g711_ulaw"
    assert beta["voice"] == "coral" and beta["turn_detection"]["type"] == "server_vad"
    ga = realtime_ga.encode(rt.ConfigureSession(config))["session"]
    assert ga["type"] == "realtime" and ga["output_modalities"] == ["audio"]
    assert ga["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert ga["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "coral"}
    assert ga["audio"]["input"]["turn_detection"]["interrupt_response"] is True
    pcm = realtime_ga.encode(rt.ConfigureSession(rt.SessionConfig("x", "coral", "pcm16")))["session"]
    assert pcm["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    # Transcription sessions: a separate event in beta, a session type in GA.
    tc = rt.ConfigureTranscription(rt.TranscriptionConfig(model="whisper-1"))
    assert realtime_beta.encode(tc)["type"] == "transcription_session.update"
    ga_tc = realtime_ga.encode(tc)
    assert ga_tc["type"] == "session.update" and ga_tc["session"]["type"] == "transcription"


@pytest.mark.parametrize("dialect,audio,transcript", [
    ("beta", "response.audio.delta", "response.audio_transcript.done"),
    ("ga", "response.output_audio.delta", "response.output_audio_transcript.done")])
def test_each_dialect_decodes_its_own_names_and_not_the_others(dialect, audio, transcript):
    decode = DIALECTS[dialect].decode
    assert decode(f'{{"type":"{audio}","response_id":"r","item_id":"i","delta":"AA=="}}') == \
        rt.AudioDelta("r", "i", "AA==")
    assert decode(f'{{"type":"{transcript}","response_id":"r","item_id":"i","transcript":"hi"}}') == \
        rt.TranscriptDone("r", "i", "hi")
    other = "response.output_audio.delta" if dialect == "beta" else "response.audio.delta"
    assert isinstance(decode(f'{{"type":"{other}","delta":"AA=="}}'), rt.Unknown)
    fc = decode('{"type":"response.function_call_arguments.done","response_id":"r","item_id":"i",'
                '"call_id":"c","name":"end_call","arguments":"{}"}')
    assert fc == rt.FunctionCall("r", "i", "c", "end_call", "{}")


@pytest.mark.parametrize("dialect", ["beta", "ga", "live"])
async def test_doctor_reports_provider_and_handshake_without_the_key(dialect):
    import io

    from telephony.offline.scripted_realtime import ScriptedRealtimeServer
    from telephony.ops.doctor import run_doctor
    from telephony.settings import Settings

    key = "sk-doctor-secret-999"
    async with ScriptedRealtimeServer(dialect=dialect) as server:
        out = io.StringIO()
        settings = Settings(twilio_validate_signatures=False,
                            realtime_url=server.url, realtime_api_key=key, realtime_dialect=dialect,
                            audio_codec="g711_ulaw")
        assert await run_doctor(settings, connect=True, out=out) == 0
    text = out.getvalue()
    assert f"Realtime dialect: {dialect}" in text and "Audio codec:      g711_ulaw" in text
    first = "session.started" if dialect == "live" else "session.created"  # Live waits for session.start
    assert f"Handshake:        OK, {first}" in text and "sess_scripted" in text
    assert key not in text
    assert server.connections[0].headers["authorization"] == f"Bearer {key}"


async def test_doctor_reports_a_refused_handshake():
    import io

    from telephony.ops.doctor import run_doctor
    from telephony.settings import Settings

    out = io.StringIO()
    settings = Settings(twilio_validate_signatures=False,
                        realtime_url="ws://127.0.0.1:9/v1/realtime", realtime_api_key="k")
    assert await run_doctor(settings, connect=True, out=out) == 1
    assert "Handshake:        FAILED" in out.getvalue()


@pytest.mark.parametrize("dialect", ["beta", "ga", "live"])
def test_serialize_matches_encode_and_escapes_passthrough_payloads(dialect):
    import json

    from telephony.wire.dialects import DIALECTS

    module = DIALECTS[dialect]
    others = (rt.CreateResponse("Say hi."),) if dialect == "live" else (rt.CancelResponse(), rt.TruncateItem("item_1", 120))
    for command in (rt.AppendAudio("//8A/w=="), rt.AppendAudio('x","type":"response.create'), *others):
        assert json.loads(module.serialize(command)) == module.encode(command)


async def test_doctor_warns_that_openai_refuses_the_beta_dialect():
    import io

    from telephony.ops.doctor import run_doctor
    from telephony.settings import Settings

    out = io.StringIO()
    await run_doctor(Settings(twilio_validate_signatures=False, realtime_api_key="k", realtime_dialect="beta",
                              realtime_url="wss://api.openai.com/v1/realtime"), connect=False, out=out)
    line = [x for x in out.getvalue().splitlines() if x.startswith("Realtime dialect:")][0]
    assert "WARNING" in line and "REALTIME_DIALECT=ga" in line and "retired" in line
    for dialect, url in (("ga", "wss://api.openai.com/v1/realtime"), ("beta", "wss://proxy.example.com/v1/realtime")):
        out = io.StringIO()
        await run_doctor(Settings(twilio_validate_signatures=False, realtime_api_key="k", realtime_dialect=dialect,
                                  realtime_url=url), connect=False, out=out)
        assert "REALTIME_DIALECT=ga" not in out.getvalue()
