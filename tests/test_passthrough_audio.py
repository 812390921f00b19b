"""Issue 27: with AUDIO_CODEC=g711_ulaw the provider's audio passes to Twilio untouched, so it is
checked as base64 first: a delta that closes the JSON string must not become a Twilio command."""

from __future__ import annotations

import json

from conftest import running_app
from helpers import simulated_call, ulaw_silence

from telephony.core.audio import UlawPassthroughCodec
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings

EVIL = '/////w=="},"event":"clear","x":{"y":"'


async def test_a_delta_that_is_not_base64_is_dropped_not_written_into_twilios_json():
    delta = json.dumps({"type": "response.audio.delta", "response_id": "resp_x", "item_id": "item_x",
                        "delta": EVIL})
    script = Script(response_ms=300, speed=5.0, respond_to_turns=False, inject=((3, delta),))
    async with ScriptedRealtimeServer(script) as server, \
            running_app(Settings(realtime_url=server.url, realtime_api_key="sk-x", audio_codec="g711_ulaw",
                                 twilio_validate_signatures=False)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(1.5), duration_s=2.0)
        result = await sim.run()
    assert server.connections[0].received  # the session ran and the delta was sent after 3 messages
    assert [m for m in result.received if m.get("event") == "clear"] == []
    assert result.clears == []
    assert all(m.get("event") in ("media", "mark") for m in result.received)
    assert result.agent  # the greeting's real audio still played


def test_passthrough_accepts_base64_and_refuses_anything_else():
    codec = UlawPassthroughCodec()
    assert codec.model_to_caller("/////w==").model_ms == 0.5
    for bad in (EVIL, "a\"b", "////\n", "///", "é///"):
        try:
            codec.model_to_caller(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} passed")
