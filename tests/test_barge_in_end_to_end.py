"""Barge-in over real sockets: the Twilio simulator, the real app, and a scripted Realtime server
speaking beta and GA whose VAD hears the caller and whose transcripts the test chooses.

The greeting is a 3 s tone at 440 Hz, generated at 1.2x real time (still being generated when
the caller speaks at 1 s). What the caller heard is measured on the audio the simulator played."""

from __future__ import annotations

import pytest
from conftest import running_app
from helpers import active_spans, dominant_freq, simulated_call, ulaw_silence, ulaw_tone, validate_event

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings

GREETING_S = 3.0


async def call_with(dialect: str, caller: bytes, transcripts: tuple[str | None, ...]):
    script = Script(response_ms=int(GREETING_S * 1000), speed=1.2, caller_transcripts=transcripts)
    async with ScriptedRealtimeServer(script, dialect=dialect) as server, \
            running_app(Settings(twilio_validate_signatures=False, realtime_url=server.url,
                                 realtime_api_key="sk-test", realtime_dialect=dialect,
                                 audio_codec="g711_ulaw")) as (app, host):
        result = await simulated_call(app, host, caller_audio=caller).run()
        metrics = app.state.metrics.render().decode()
    (conn,) = server.connections
    for event in conn.received:
        validate_event(event, dialect, "client")
    return conn, result, metrics


def heard_of(result, freq: float) -> float:
    """Seconds of the agent's tone at ``freq`` the caller heard."""
    return sum(end - start for start, end in active_spans(result.agent, frame=8)  # 1 ms frames
               if dominant_freq(result.agent[int(start * 8000):int(end * 8000)]) == pytest.approx(freq, abs=5))


@pytest.mark.parametrize("dialect", ["beta", "ga"])
@pytest.mark.parametrize("transcript", ["Mm-hmm.", "", None], ids=["backchannel", "noise", "no-transcript"])
async def test_a_backchannel_or_a_noise_pauses_the_greeting_and_it_resumes_whole(dialect, transcript):
    caller = ulaw_silence(1.0) + ulaw_tone(500, 0.3) + ulaw_silence(4.5)
    conn, result, metrics = await call_with(dialect, caller, (transcript,))
    assert len(result.clears) == 1 and 1.0 <= result.clears[0] <= 1.1  # paused at the caller's sound
    spans = active_spans(result.agent)
    assert len(spans) == 2, spans  # before the pause, and the rest after it
    # The caller heard all of the greeting, once: nothing skipped, nothing repeated (± a frame).
    assert heard_of(result, 440) == pytest.approx(GREETING_S, abs=0.025)
    # The model was told nothing: no truncate, no cancel, no delete, no second response.
    types = conn.received_types()
    assert not {"conversation.item.truncate", "response.cancel", "conversation.item.delete"} & set(types)
    assert types.count("response.create") == 1
    td = conn.received[0]["session"]["turn_detection"] if dialect == "beta" else \
        conn.received[0]["session"]["audio"]["input"]["turn_detection"]
    assert td["create_response"] is False and td["interrupt_response"] is False
    assert 'telephony_interruptions_total{decision="resumed"} 1.0' in metrics


@pytest.mark.parametrize("dialect", ["beta", "ga"])
@pytest.mark.parametrize("tone_s,transcript", [(0.3, "Stop."), (1.5, "Wait, that is not what I asked for.")],
                         ids=["one-word", "sentence"])
async def test_a_real_interruption_stops_the_greeting_at_what_was_heard_and_is_answered(dialect, tone_s, transcript):
    caller = ulaw_silence(1.0) + ulaw_tone(500, tone_s) + ulaw_silence(4.5)
    conn, result, metrics = await call_with(dialect, caller, (transcript,))
    assert len(result.clears) == 1
    (truncate,) = conn.of_type("conversation.item.truncate")
    clear = next(e for e in result.timeline if e.kind == "clear")
    assert abs(truncate["audio_end_ms"] - clear.detail["played_ms"]) <= 20  # cut at what was heard
    assert conn.of_type("response.cancel")  # the greeting was still being generated
    assert conn.received_types().count("response.create") == 2  # the greeting, then the answer
    # The greeting until the pause, never again; then the answer (660 Hz), whole.
    assert heard_of(result, 440) == pytest.approx(clear.detail["played_ms"] / 1000, abs=0.025)
    assert heard_of(result, 660) == pytest.approx(GREETING_S, abs=0.05)
    assert 'telephony_interruptions_total{decision="stopped"} 1.0' in metrics
