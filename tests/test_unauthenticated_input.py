"""Issue 27 over real sockets: bad input before authentication gets the protocol's own refusal
(never an unhandled exception), and oversized input after a verified start is dropped while the
call goes on."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import httpx
import pytest
import websockets
from conftest import running_app
from helpers import simulated_call, stream_url, ulaw_tone

from telephony.offline.openai_sip_peer import OpenAISipPeer, incoming_call_event, sign_webhook
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer, TonePersona
from telephony.settings import Settings

START_FIELDS = {"streamSid": "MZ1", "accountSid": "AC1", "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}


def settings_for(server: ScriptedRealtimeServer) -> Settings:
    return Settings(realtime_url=server.url, realtime_api_key="sk-test", stream_secret="s" * 32,
                    twilio_validate_signatures=False)


def refused(metrics: str, reason: str) -> float:
    prefix = f'telephony_streams_refused_total{{reason="{reason}"'
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix))



def our_errors(caplog) -> list[logging.LogRecord]:
    """This service's error lines. asyncio's "Task exception was never retrieved" for a task some
    earlier test in this process left behind is logged whenever the collector finds it: not ours."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("telephony")]

@pytest.mark.parametrize("field,value", [("tracks", 0), ("tracks", True), ("tracks", 1.5), ("tracks", [1]),
                                         ("tracks", {"a": 1}), ("customParameters", [1]),
                                         ("mediaFormat", 5), ("callSid", None), ("streamSid", {})])
async def test_a_malformed_start_is_refused_with_1008_and_counted(field, value, caplog):
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        sid = "CA" + uuid.uuid4().hex
        params = app.state.stream_tokens.with_token({"call_sid": sid}, time.time())
        start = {**START_FIELDS, "callSid": sid, "customParameters": params, field: value}
        async with websockets.connect(stream_url(app, host, sid)) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send(json.dumps({"event": "start", "streamSid": "MZ1", "start": start}))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 3.0)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://{host}/metrics")).text
    assert ws.close_code == 1008
    assert refused(metrics, "bad_start") == 1
    assert server.connections == []
    assert not our_errors(caplog), caplog.text


@pytest.mark.parametrize("signature", ["v1,\u00e9" + "A" * 43, "v1,\u2028abc", "\u00ff"])
async def test_a_non_ascii_webhook_signature_is_a_400_without_a_traceback(signature, profile, caplog):
    script = Script()
    async with OpenAISipPeer(TonePersona(script), script.engine_config("ga")) as peer, \
            running_app(Settings(openai_webhook_secret=peer.secret, openai_base_url=peer.base_url,
                                 openai_api_key=peer.api_key, twilio_validate_signatures=False),
                        profile) as (app, host):
        body = incoming_call_event("rtc_x", [])
        headers = sign_webhook(peer.secret, body, "wh_1", int(time.time()))
        headers = {k: v.encode() for k, v in headers.items()}
        headers["webhook-signature"] = signature.encode("utf-8")
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/openai/sip", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert not our_errors(caplog), caplog.text


async def test_a_huge_mark_name_and_huge_dtmf_digits_are_dropped_and_the_call_goes_on(caplog):
    mark = json.dumps({"event": "mark", "streamSid": "MZx", "mark": {"name": "9" * 5000}})
    dtmf = json.dumps({"event": "dtmf", "streamSid": "MZx", "dtmf": {"track": "inbound_track", "digit": "7" * 60000}})
    key = json.dumps({"event": "dtmf", "streamSid": "MZx", "dtmf": {"track": "inbound_track", "digit": "5"}})
    script = Script(response_ms=300, speed=5.0, respond_to_turns=False)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_tone(440, 3.0), duration_s=3.5,
                             extra_messages=[(0.3, mark), (0.4, dtmf), (0.5, dtmf), (0.6, key)])
        result = await sim.run()
    assert result.close_code in (None, 1000)
    (conn,) = server.connections
    texts = [c["text"] for e in conn.of_type("conversation.item.create") if e["item"]["type"] == "message"
             for c in e["item"]["content"]]
    assert texts == ["The caller pressed 5 on the keypad."]  # the real key only
    assert len(conn.of_type("input_audio_buffer.append")) > 100  # the caller's audio went on after
    assert any(e.kind == "agent_audio_start" and e.t > 0.6 for e in result.timeline)  # and the agent's answer
    assert "9" * 100 not in caplog.text and "7" * 100 not in caplog.text
    assert not our_errors(caplog), caplog.text
