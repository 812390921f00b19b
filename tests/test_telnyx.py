"""Telnyx end to end over real loopback sockets: a fake Telnyx (signed webhooks, its media
websocket, its Call Control REST API) against the real app and the scripted Realtime server."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from conftest import running_app
from fake_telnyx import FakeTelnyxCaller, FakeTelnyxRest, TelnyxKeys, post_webhook
from helpers import active_spans, dominant_freq, stream_from_twiml, ulaw_silence, ulaw_tone, wait_until

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings
from telephony.wire import telnyx as telnyx_wire

API_KEY = "sk-test-secret-key-123"
TELNYX_KEY = "KEY-telnyx-secret"
CALL_ID = "v3:9X2vSc3a0Oc2k5z3Ba_Telnyx-call"


def settings_for(server: ScriptedRealtimeServer | None, keys: TelnyxKeys | None, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url if server else "ws://127.0.0.1:9",
                    realtime_api_key=API_KEY, telnyx_public_key=keys.public_b64 if keys else "", **overrides)


async def answered(host: str, keys: TelnyxKeys, call_id: str = CALL_ID) -> tuple[str, dict[str, str]]:
    r = await post_webhook(host, "/telnyx/voice", {"AccountSid": "acct", "CallSid": call_id, "From": "+15551230000",
                                                   "To": "+15559870000", "CallStatus": "ringing"}, keys)
    assert r.status_code == 200, r.text
    return stream_from_twiml(r.text, host)


async def test_webhook_refused_unless_signed_and_off_without_a_key(profile):
    keys, other = TelnyxKeys(), TelnyxKeys()
    form = {"CallSid": CALL_ID, "From": "+15551230000", "To": "+15559870000"}
    async with running_app(settings_for(None, None)) as (app, host):
        off = await post_webhook(host, "/telnyx/voice", form, keys)
    assert off.status_code == 503 and "TELNYX_PUBLIC_KEY" in off.text and "wss" not in off.text
    async with running_app(settings_for(None, keys)) as (app, host):
        unsigned = await post_webhook(host, "/telnyx/voice", form, None)
        forged = await post_webhook(host, "/telnyx/voice", form, other)
        stale = await post_webhook(host, "/telnyx/voice", form, keys, timestamp=int(time.time()) - 400)
        good = await post_webhook(host, "/telnyx/voice", form, keys)
    for refused in (unsigned, forged, stale):
        assert 400 <= refused.status_code < 500 and refused.status_code not in (404, 405), refused
        assert "wss" not in refused.text and "Stream" not in refused.text
    assert good.status_code == 200 and good.headers["content-type"].startswith("application/xml")
    assert '<Stream url="wss://bridge.example.com/telnyx/media-stream/s1.' in good.text
    assert 'bidirectionalMode="rtp"' in good.text and 'bidirectionalCodec="PCMU"' in good.text
    assert good.text.index("</Connect>") < good.text.index("<Say>") and profile.fallback in good.text
    _, params = stream_from_twiml(good.text)
    assert params["call_sid"] == telnyx_wire.call_sid_for(CALL_ID) and params["carrier"] == "telnyx"
    assert params["token"]


async def test_development_mode_serves_unsigned_webhooks():
    form = {"CallSid": CALL_ID, "From": "+15551230000", "To": "+15559870000"}
    async with running_app(settings_for(None, None, telnyx_validate_signatures=False)) as (app, host):
        r = await post_webhook(host, "/telnyx/voice", form, None)
    assert r.status_code == 200 and "/telnyx/media-stream/s1." in r.text


async def test_a_call_hears_the_agent_and_the_agent_hears_the_caller_with_barge_in(profile):
    keys = TelnyxKeys()
    script = Script(response_ms=3000, speed=1.2)
    caller = ulaw_silence(1.0) + ulaw_tone(500, 1.0) + ulaw_silence(3.6)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(settings_for(server, keys, audio_codec="g711_ulaw")) as (app, host):
        url, params = await answered(host, keys)
        result = await FakeTelnyxCaller(url, call_control_id=CALL_ID, caller_audio=caller,
                                        custom_parameters=params, shuffle_pairs=True).run()
        await wait_until(lambda: server.connections[0].closed, "the upstream socket to close")
    (conn,) = server.connections
    # The caller's audio reached the model in order (pairs of frames arrived swapped).
    appends = conn.of_type("input_audio_buffer.append")
    assert len(appends) >= 200
    sent = b"".join(base64.b64decode(e["audio"]) for e in appends)  # μ-law passthrough: byte for byte
    assert sent[:len(caller)] == caller[:len(sent)]
    # Audio back: rtp mode's raw PCMU, never under 20 ms a chunk; the same messages Telnyx documents.
    assert result.media_sizes and min(result.media_sizes) >= 160
    assert {m["event"] for m in result.sent} <= {"media", "mark", "clear"}
    assert all(set(m) == {"event", "media"} and set(m["media"]) == {"payload"}
               for m in result.sent if m["event"] == "media")
    # One clear at the barge-in, soon after the caller started at 1.0 s; one truncate upstream.
    assert len(result.clears) == 1 and 1.0 <= result.clears[0] <= 1.3, result.clears
    assert len(conn.of_type("conversation.item.truncate")) == 1
    spans = active_spans(result.agent)
    assert len(spans) == 2, spans
    (g_start, g_end), (r_start, r_end) = spans
    assert dominant_freq(result.agent[int(g_start * 8000):int(g_end * 8000)]) == pytest.approx(440, abs=5)
    assert dominant_freq(result.agent[int(r_start * 8000):int(r_end * 8000)]) == pytest.approx(660, abs=5)
    assert g_end <= 1.0 + 0.3
    # Nothing of the interrupted greeting after the clear.
    assert not any(435 < dominant_freq(result.agent[int(t * 8000):int(t * 8000) + 800]) < 445
                   for t in (r_start, r_start + 1.0, r_start + 2.0))


async def test_keypad_digits_reach_the_model(profile):
    keys = TelnyxKeys()
    script = Script(response_ms=400, speed=5.0, respond_to_turns=False)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server, keys)) as (app, host):
        url, params = await answered(host, keys)
        await FakeTelnyxCaller(url, call_control_id=CALL_ID, caller_audio=ulaw_silence(3.0), custom_parameters=params,
                               dtmf_at={0.8: "4", 0.9: "2", 1.0: "#"}).run()
    texts = [e["item"]["content"][0]["text"] for e in server.connections[0].of_type("conversation.item.create")]
    assert texts == ["The caller pressed 42# on the keypad."]


async def test_a_stream_without_its_signed_url_or_token_is_refused(profile):
    keys = TelnyxKeys()
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server, keys)) as (app, host):
        url, params = await answered(host, keys)
        forged = {**params, "token": params["token"][:-2] + "AA"}
        result = await FakeTelnyxCaller(url, call_control_id=CALL_ID, caller_audio=ulaw_silence(0.5),
                                        custom_parameters=forged).run()
        other_call = await FakeTelnyxCaller((await answered(host, keys, "v3:another"))[0],
                                            call_control_id=CALL_ID, caller_audio=ulaw_silence(0.5),
                                            custom_parameters=params).run()
    assert result.closed_by_app and not result.sent and other_call.closed_by_app and not other_call.sent
    assert not server.connections


async def test_outbound_call_through_call_control_then_amd_voicemail_and_hang_up(profile):
    keys, rest = TelnyxKeys(), FakeTelnyxRest()
    script = Script(response_ms=2000, speed=5.0, respond_to_turns=False)
    async with rest.running(), ScriptedRealtimeServer(script) as server, running_app(settings_for(
            server, keys, telnyx_api_key=TELNYX_KEY, telnyx_connection_id="conn-1", telnyx_api_base_url=rest.base_url,
            calls_api_token="calls-token", public_url="https://bridge.example.com")) as (app, host):
        import httpx

        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/calls", headers={"Authorization": "Bearer calls-token"},
                                  json={"to": "+15557654321", "from": "+15559870000", "carrier": "telnyx",
                                        "machine_detection": True, "greeting": "Hello from Telnyx"})
        assert r.status_code == 201, r.text
        placed = r.json()
        assert placed["carrier"] == "telnyx" and placed["carrier_call_id"] == "v3:fake-outbound-call"
        (path, body, auth) = rest.requests[0]
        assert path == "/v2/calls" and auth == f"Bearer {TELNYX_KEY}"
        assert body["connection_id"] == "conn-1" and body["to"] == "+15557654321" and body["from"] == "+15559870000"
        assert body["stream_bidirectional_mode"] == "rtp" and body["stream_bidirectional_codec"] == "PCMU"
        assert body["answering_machine_detection"] == "detect_beep"
        assert body["webhook_url"] == "https://bridge.example.com/telnyx/status"
        assert body["stream_url"].startswith("wss://bridge.example.com/telnyx/media-stream/s1.")
        state = json.loads(base64.b64decode(body["client_state"]))
        assert state["call_sid"] == placed["call_sid"] and state["greeting"] == "Hello from Telnyx"
        # Telnyx answers and opens the stream (parameters in client_state, no custom_parameters).
        url = "ws://" + host + "/" + body["stream_url"].split("/", 3)[3]
        caller = FakeTelnyxCaller(url, call_control_id="v3:fake-outbound-call", caller_audio=b"",
                                  client_state=body["client_state"], duration_s=5.0)
        call = asyncio.create_task(caller.run())
        await wait_until(lambda: server.connections and any(
            e.get("type") == "response.done" for e in server.connections[0].sent), "the greeting's response.done")
        amd = {"data": {"event_type": "call.machine.greeting.ended", "payload": {
            "call_control_id": "v3:fake-outbound-call", "result": "beep_detected"}}}
        unsigned = await post_webhook(host, "/telnyx/status", {}, None, json_body=amd)
        assert unsigned.status_code == 403
        r = await post_webhook(host, "/telnyx/status", {}, keys, json_body=amd)
        assert r.status_code == 204
        await wait_until(lambda: any(p.endswith("/actions/hangup") for p, _, _ in rest.requests), "the hang-up",
                         timeout=8)
        call.cancel()
    conn = server.connections[0]
    creates = conn.of_type("response.create")
    assert len(creates) == 2 and profile.voicemail in creates[1]["response"]["instructions"]
    hangup = [p for p, _, a in rest.requests if p.endswith("/actions/hangup")]
    assert hangup == ["/v2/calls/v3:fake-outbound-call/actions/hangup"]


async def test_outbound_refusals_name_what_is_missing():
    import httpx

    async with running_app(Settings(twilio_validate_signatures=False, calls_api_token="t",
                                    public_url="https://bridge.example.com")) as (app, host):
        async with httpx.AsyncClient() as client:
            no_rest = await client.post(f"http://{host}/calls", headers={"Authorization": "Bearer t"},
                                        json={"to": "+15557654321", "from": "+15559870000", "carrier": "telnyx"})
            no_from = await client.post(f"http://{host}/calls", headers={"Authorization": "Bearer t"},
                                        json={"to": "+15557654321", "carrier": "telnyx"})
            bad = await client.post(f"http://{host}/calls", headers={"Authorization": "Bearer t"},
                                    json={"to": "+15557654321", "carrier": "pigeon"})
    assert no_rest.status_code == 503 and "TELNYX_API_KEY" in no_rest.text
    assert no_from.status_code == 422 and "'from' is required for carrier telnyx" in no_from.text
    assert bad.status_code == 422 and "'carrier'" in bad.text


def frame(seq: int, payload: bytes = b"\xff" * 160, event: str = "media") -> str:
    body = {"event": event, "sequence_number": str(seq), "stream_id": "S"}
    if event == "media":
        body["media"] = {"track": "inbound", "payload": base64.b64encode(payload).decode()}
    elif event == "dtmf":
        body["dtmf"] = {"digit": "5"}
    return json.dumps(body)


def test_wire_orders_media_by_sequence_number_and_gives_up_a_lost_frame():
    wire = telnyx_wire.TelnyxMedia()
    (start,) = wire.parse(json.dumps({"event": "start", "sequence_number": "1", "stream_id": "S", "start": {
        "call_control_id": CALL_ID, "custom_parameters": {"a": "b"},
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}))
    assert (start.encoding, start.carrier_call_id, start.call_sid) == ("audio/x-mulaw", CALL_ID,
                                                                       telnyx_wire.call_sid_for(CALL_ID))
    payloads = [bytes([n]) * 160 for n in range(20)]
    assert wire.parse(frame(3, payloads[3])) == ()  # 2 is missing: held
    assert len(wire.parse(frame(4, payloads[4]))) == 0
    released = wire.parse(frame(2, payloads[2]))
    assert [base64.b64decode(e.payload) for e in released] == payloads[2:5]
    assert wire.parse(frame(3, payloads[3])) == ()  # a duplicate, or too late: dropped
    (dtmf,) = wire.parse(frame(6, event="dtmf"))  # 5 lost; a keypress takes 6
    held = [wire.parse(frame(n, payloads[n])) for n in range(7, 12)]
    assert held == [()] * 5  # waiting for 5, the depth not yet passed
    given_up = wire.parse(frame(12, payloads[12]))  # past the depth: 5 is given up
    assert [base64.b64decode(e.payload) for e in given_up] == payloads[7:13]


def test_wire_sends_at_least_20_ms_and_flushes_before_a_mark():
    from telephony.wire import twilio as tw

    wire = telnyx_wire.TelnyxMedia()
    assert wire.encode(tw.SendMedia(base64.b64encode(b"\x01" * 100).decode()), "S") == ()
    (media,) = wire.encode(tw.SendMedia(base64.b64encode(b"\x02" * 100).decode()), "S")
    assert base64.b64decode(json.loads(media)["media"]["payload"]) == b"\x01" * 100 + b"\x02" * 100
    assert wire.encode(tw.SendMedia(base64.b64encode(b"\x03" * 40).decode()), "S") == ()
    padded, mark = wire.encode(tw.SendMark("m1"), "S")
    assert base64.b64decode(json.loads(padded)["media"]["payload"]) == b"\x03" * 40 + b"\xff" * 120
    assert json.loads(mark) == {"event": "mark", "mark": {"name": "m1"}}
    wire.encode(tw.SendMedia(base64.b64encode(b"\x04" * 40).decode()), "S")
    assert wire.encode(tw.SendClear(), "S") == ('{"event":"clear"}',)  # the held remainder is dropped too
    (mark,) = wire.encode(tw.SendMark("m2"), "S")
    assert json.loads(mark)["event"] == "mark"


async def test_rest_hang_up_of_an_ended_call_is_done_and_transfer_dials_the_target():
    from telephony.serve.carriers import CarrierError
    from telephony.serve.carriers.telnyx import TelnyxControl

    rest = FakeTelnyxRest()
    async with rest.running():
        control = TelnyxControl(Settings(telnyx_api_key=TELNYX_KEY, telnyx_api_base_url=rest.base_url))
        try:
            await control.transfer(CALL_ID, "+15550001111")
            rest.hangup_status = 422  # Telnyx's 90018: the call has already ended
            await control.hang_up(CALL_ID)
            rest.hangup_status = 403
            with pytest.raises(CarrierError) as refused:
                await control.hang_up(CALL_ID)
        finally:
            await control.aclose()
    assert refused.value.status == 403
    (path, body, auth), *_ = rest.requests
    assert path == f"/v2/calls/{CALL_ID}/actions/transfer" and body == {"to": "+15550001111"}
    assert auth == f"Bearer {TELNYX_KEY}"
    assert [p for p, _, _ in rest.requests[1:]] == [f"/v2/calls/{CALL_ID}/actions/hangup"] * 2
