"""Plivo end to end over real loopback sockets: a fake Plivo (V3-signed webhooks made with
plivo-python, its audio-streaming websocket, its REST API) against the real app and the scripted
Realtime server."""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
from conftest import running_app
from fake_plivo import AUTH_ID, AUTH_TOKEN, FakePlivoCaller, FakePlivoRest, post_webhook, stream_from_xml
from helpers import active_spans, dominant_freq, ulaw_silence, ulaw_tone, wait_until

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve.carriers import plivo as plivo_rest
from telephony.settings import Settings
from telephony.wire import plivo as plivo_wire
from telephony.wire import twilio as tw

API_KEY = "sk-test-secret-key-123"
CALL_UUID = "a0b1c2d3-1111-2222-3333-444455556666"
FORM = {"CallUUID": CALL_UUID, "From": "15551230000", "To": "15559870000", "CallStatus": "ringing",
        "Direction": "inbound"}


def settings_for(server: ScriptedRealtimeServer | None, token: str = AUTH_TOKEN, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url if server else "ws://127.0.0.1:9",
                    realtime_api_key=API_KEY, plivo_auth_id=AUTH_ID if token else "", plivo_auth_token=token,
                    **overrides)


async def answered(host: str, call_uuid: str = CALL_UUID) -> str:
    r = await post_webhook(host, "/plivo/voice", {**FORM, "CallUUID": call_uuid})
    assert r.status_code == 200, r.text
    return stream_from_xml(r.text, host)[0]


def test_our_v3_check_agrees_with_plivo_python():
    from fake_plivo import sign
    from plivo.utils import validate_v3_signature

    for method, url, fields in [("POST", "https://h.example/plivo/voice", {"CallUUID": "x", "From": "1"}),
                                ("POST", "https://h.example/plivo/voice?b=2&a=1", {"To": "+1 5"}),
                                ("POST", "https://h.example/plivo/status?x=1", {}),
                                ("GET", "https://h.example/plivo/voice?z=9", {"CallUUID": "y"})]:
        headers = {k.lower(): v for k, v in sign(url, method, fields).items()}
        # As the app sees it: a GET's fields are in its query, a POST's in its form.
        seen_url = url + ("&" if "?" in url else "?") + urlencode(fields) if method == "GET" else url
        fields_list = [] if method == "GET" else list(fields.items())
        assert plivo_rest.signature_refusal(AUTH_TOKEN, headers, method, seen_url, fields_list) is None
        assert validate_v3_signature(method, url, headers["x-plivo-signature-v3-nonce"], AUTH_TOKEN,
                                     headers["x-plivo-signature-v3"], dict(fields))
        assert plivo_rest.signature_refusal("another-token", headers, method, seen_url, fields_list)


async def test_webhook_refused_unless_signed_and_off_without_a_token(profile):
    async with running_app(settings_for(None, token="")) as (app, host):
        off = await post_webhook(host, "/plivo/voice", FORM)
    assert off.status_code == 503 and "PLIVO_AUTH_TOKEN" in off.text and "wss" not in off.text
    async with running_app(settings_for(None)) as (app, host):
        unsigned = await post_webhook(host, "/plivo/voice", FORM, token=None)
        forged = await post_webhook(host, "/plivo/voice", FORM, token="not-the-token")
        wrong_host = await post_webhook(host, "/plivo/voice", FORM, public_base="https://evil.example.com")
        good = await post_webhook(host, "/plivo/voice", FORM)
        get = await post_webhook(host, "/plivo/voice", FORM, method="GET")
    for refused in (unsigned, forged):
        assert refused.status_code == 403 and "wss" not in refused.text and "Stream" not in refused.text
    assert wrong_host.status_code == 200  # no PUBLIC_URL: the Host is what Plivo signed (as for Twilio)
    assert good.status_code == 200 and good.headers["content-type"].startswith("application/xml")
    assert get.status_code == 200 and "<Stream" in get.text
    url, stream = stream_from_xml(good.text, host)
    assert stream.attrib == {"bidirectional": "true", "keepCallAlive": "true",
                             "contentType": "audio/x-mulaw;rate=8000"}
    assert stream.text.startswith("wss://bridge.example.com/plivo/media-stream/s1.")
    assert good.text.index("</Stream>") < good.text.index("<Speak>") and profile.fallback in good.text
    params = plivo_wire.parameters_from_segment(stream.text.rsplit("/", 1)[1])
    assert params["call_sid"] == plivo_wire.call_sid_for(CALL_UUID) and params["carrier"] == "plivo"
    assert params["from"] == "+15551230000" and params["to"] == "+15559870000" and params["token"]


async def test_signatures_are_over_public_url_and_development_mode_serves_unsigned():
    public = "https://bridge.example.com"
    async with running_app(settings_for(None, public_url=public)) as (app, host):
        other_host = await post_webhook(host, "/plivo/voice", FORM, public_base="https://evil.example.com")
        ours = await post_webhook(host, "/plivo/voice", FORM)
    assert other_host.status_code == 403 and ours.status_code == 200
    async with running_app(settings_for(None, token="", plivo_validate_signatures=False)) as (app, host):
        r = await post_webhook(host, "/plivo/voice", FORM, token=None)
    assert r.status_code == 200 and "/plivo/media-stream/s1." in r.text


async def test_a_call_hears_the_agent_and_the_agent_hears_the_caller_with_barge_in(profile):
    script = Script(response_ms=3000, speed=1.2)
    caller = ulaw_silence(1.0) + ulaw_tone(500, 1.0) + ulaw_silence(3.6)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(settings_for(server, audio_codec="g711_ulaw")) as (app, host):
        url = await answered(host)
        result = await FakePlivoCaller(url, call_uuid=CALL_UUID, caller_audio=caller).run()
        await wait_until(lambda: server.connections[0].closed, "the upstream socket to close")
    (conn,) = server.connections
    appends = conn.of_type("input_audio_buffer.append")
    assert len(appends) >= 200
    sent = b"".join(base64.b64decode(e["audio"]) for e in appends)  # μ-law passthrough: byte for byte
    assert sent[:len(caller)] == caller[:len(sent)]
    # Audio back as Plivo documents it: playAudio (μ-law 8 kHz, as the stream's contentType), checkpoints.
    assert {m["event"] for m in result.sent} <= {"playAudio", "checkpoint", "clearAudio"}
    assert all(set(m) == {"event", "media"} for m in result.sent if m["event"] == "playAudio")
    assert result.played, "no checkpoint was echoed"
    # One clearAudio at the barge-in, soon after the caller started at 1.0 s; one truncate upstream.
    assert len(result.clears) == 1 and 1.0 <= result.clears[0] <= 1.3, result.clears
    assert len(conn.of_type("conversation.item.truncate")) == 1
    spans = active_spans(result.agent)
    assert len(spans) == 2, spans
    (g_start, g_end), (r_start, r_end) = spans
    assert dominant_freq(result.agent[int(g_start * 8000):int(g_end * 8000)]) == pytest.approx(440, abs=5)
    assert dominant_freq(result.agent[int(r_start * 8000):int(r_end * 8000)]) == pytest.approx(660, abs=5)
    assert g_end <= 1.0 + 0.3
    # Nothing of the interrupted greeting after the clear.
    clear_index = next(i for i, m in enumerate(result.sent) if m["event"] == "clearAudio")
    after = b"".join(base64.b64decode(m["media"]["payload"]) for m in result.sent[clear_index:]
                     if m["event"] == "playAudio")
    assert after and not any(435 < dominant_freq(after[k:k + 800]) < 445 for k in range(0, len(after) - 800, 800))


async def test_keypad_digits_reach_the_model(profile):
    script = Script(response_ms=400, speed=5.0, respond_to_turns=False)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        url = await answered(host)
        await FakePlivoCaller(url, call_uuid=CALL_UUID, caller_audio=ulaw_silence(3.0),
                              dtmf_at={0.8: "4", 0.9: "2", 1.0: "#"}).run()
    texts = [e["item"]["content"][0]["text"] for e in server.connections[0].of_type("conversation.item.create")]
    assert texts == ["The caller pressed 42# on the keypad."]


async def test_a_stream_without_its_parameters_or_with_edited_ones_is_refused(profile):
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        url = await answered(host)
        bare = await FakePlivoCaller(url.rsplit("/", 1)[0], call_uuid=CALL_UUID, caller_audio=ulaw_silence(0.5)).run()
        params = plivo_wire.parameters_from_segment(url.rsplit("/", 1)[1])
        edited = url.rsplit("/", 1)[0] + "/" + plivo_wire.parameters_segment({**params, "to": "+15550000000"})
        forged = await FakePlivoCaller(edited, call_uuid=CALL_UUID, caller_audio=ulaw_silence(0.5)).run()
    assert bare.closed_by_app and not bare.sent and forged.closed_by_app and not forged.sent
    assert not server.connections


async def test_outbound_call_through_rest_then_amd_voicemail_and_hang_up(profile):
    rest = FakePlivoRest()
    script = Script(response_ms=2000, speed=5.0, respond_to_turns=False)
    async with rest.running(), ScriptedRealtimeServer(script) as server, running_app(settings_for(
            server, plivo_api_base_url=rest.base_url, calls_api_token="calls-token",
            public_url="https://bridge.example.com")) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/calls", headers={"Authorization": "Bearer calls-token"},
                                  json={"to": "+15557654321", "from": "+15559870000", "carrier": "plivo",
                                        "machine_detection": True, "greeting": "Hello from Plivo"})
        assert r.status_code == 201, r.text
        placed = r.json()
        assert placed["carrier"] == "plivo" and placed["carrier_request_id"] == "req-uuid-1"
        (method, path, body, auth) = rest.requests[0]
        assert (method, path) == ("POST", f"/v1/Account/{AUTH_ID}/Call/")
        assert auth == "Basic " + base64.b64encode(f"{AUTH_ID}:{AUTH_TOKEN}".encode()).decode()
        assert body["to"] == "15557654321" and body["from"] == "15559870000" and body["answer_method"] == "POST"
        assert body["machine_detection"] == "true"
        assert body["machine_detection_url"] == body["hangup_url"] == "https://bridge.example.com/plivo/status"
        answer = urlsplit(body["answer_url"])
        assert answer.netloc == "bridge.example.com" and answer.path == "/plivo/voice"
        # The callee answers: Plivo fetches the answer URL (signed, with the call's CallUUID).
        out_uuid = "b9999999-aaaa-bbbb-cccc-dddddddddddd"
        form = {"CallUUID": out_uuid, "From": "15559870000", "To": "15557654321", "Direction": "outbound",
                "CallStatus": "in-progress", "RequestUUID": "req-uuid-1"}
        tampered = await post_webhook(host, "/plivo/voice?" + answer.query.replace("Plivo", "Evil"), form)
        assert tampered.status_code == 403
        xml_answer = await post_webhook(host, f"/plivo/voice?{answer.query}", form)
        assert xml_answer.status_code == 200, xml_answer.text
        url, stream = stream_from_xml(xml_answer.text, host)
        params = plivo_wire.parameters_from_segment(stream.text.rsplit("/", 1)[1])
        assert params["call_sid"] == placed["call_sid"] and params["greeting"] == "Hello from Plivo"
        caller = FakePlivoCaller(url, call_uuid=out_uuid, caller_audio=b"", duration_s=5.0)
        call = asyncio.create_task(caller.run())
        await wait_until(lambda: server.connections and any(
            e.get("type") == "response.done" for e in server.connections[0].sent), "the greeting's response.done")
        amd = {"CallUUID": out_uuid, "Machine": "true", "Event": "MachineDetection", "Direction": "outbound",
               "RequestUUID": "req-uuid-1", "CallStatus": "in-progress"}
        assert (await post_webhook(host, "/plivo/status", amd, token=None)).status_code == 403
        assert (await post_webhook(host, "/plivo/status", amd)).status_code == 204
        await wait_until(lambda: any(m == "DELETE" for m, *_ in rest.requests), "the hang-up", timeout=8)
        call.cancel()
    creates = server.connections[0].of_type("response.create")
    assert len(creates) == 2 and profile.voicemail in creates[1]["response"]["instructions"]
    assert [p for m, p, *_ in rest.requests if m == "DELETE"] == [f"/v1/Account/{AUTH_ID}/Call/{out_uuid}/"]


async def test_rest_hang_up_of_an_ended_call_is_done_and_transfer_fetches_a_dial():
    from telephony.serve.carriers import CarrierError

    rest = FakePlivoRest()
    async with rest.running(), running_app(settings_for(None, plivo_api_base_url=rest.base_url,
                                                        public_url="https://bridge.example.com")) as (app, host):
        control = plivo_rest.PlivoControl(Settings(plivo_auth_id=AUTH_ID, plivo_auth_token=AUTH_TOKEN,
                                                    plivo_api_base_url=rest.base_url),
                                          lambda target: "https://bridge.example.com/plivo/transfer?" + urlencode({"to": target}))
        try:
            await control.transfer(CALL_UUID, "+15550001111")
            rest.hangup_status = 404  # already over
            await control.hang_up(CALL_UUID)
            rest.hangup_status = 401
            with pytest.raises(CarrierError) as refused:
                await control.hang_up(CALL_UUID)
        finally:
            await control.aclose()
        (_, _, body, _) = rest.requests[0]
        transfer_url = urlsplit(body["aleg_url"])
        dial = await post_webhook(host, f"{transfer_url.path}?{transfer_url.query}", {"CallUUID": CALL_UUID})
        bad = await post_webhook(host, "/plivo/transfer?to=somewhere", {"CallUUID": CALL_UUID})
    assert refused.value.status == 401
    assert [(m, p) for m, p, *_ in rest.requests] == [("POST", f"/v1/Account/{AUTH_ID}/Call/{CALL_UUID}/")] + \
        [("DELETE", f"/v1/Account/{AUTH_ID}/Call/{CALL_UUID}/")] * 2
    assert body["legs"] == "aleg" and body["aleg_method"] == "POST"
    assert dial.status_code == 200 and "<Dial><Number>+15550001111</Number></Dial>" in dial.text
    assert bad.status_code == 400


def test_wire_releases_pending_checkpoints_on_cleared_audio_and_drops_late_echoes():
    wire = plivo_wire.PlivoMedia({"call_sid": "CA" + "1" * 32, "token": "t"})
    (start,) = wire.parse(json.dumps({"event": "start", "sequenceNumber": 1, "start": {
        "callId": CALL_UUID, "streamId": "S1", "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}))
    assert (start.call_sid, start.carrier_call_id, start.stream_sid) == ("CA" + "1" * 32, CALL_UUID, "S1")
    assert start.custom_parameters["token"] == "t"
    for name in ("m1", "m2", "m3"):
        (frame,) = wire.encode(tw.SendMark(name), "S1")
        assert json.loads(frame) == {"event": "checkpoint", "streamId": "S1", "name": name}
    assert wire.parse(json.dumps({"event": "playedStream", "streamId": "S1", "name": "m1"})) == (tw.Mark("m1"),)
    (clear,) = wire.encode(tw.SendClear(), "S1")
    assert json.loads(clear) == {"event": "clearAudio", "streamId": "S1"}
    released = wire.parse(json.dumps({"event": "clearedAudio", "streamId": "S1"}))
    assert released == (tw.Mark("m2"), tw.Mark("m3"))
    assert wire.parse(json.dumps({"event": "playedStream", "streamId": "S1", "name": "m3"})) == ()
    (media,) = wire.encode(tw.SendMedia(base64.b64encode(b"\x01" * 160).decode()), "S1")
    assert json.loads(media)["media"] == {"contentType": "audio/x-mulaw", "sampleRate": 8000,
                                          "payload": base64.b64encode(b"\x01" * 160).decode()}
