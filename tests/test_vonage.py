"""Vonage end to end over real loopback sockets: a fake Vonage (HS256-signed webhooks, its L16
16 kHz websocket, its REST API checking RS256 application JWTs) against the real app and the
scripted Realtime server; and the wire's playout clock on its own (it has no sockets)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from urllib.parse import urlsplit

import httpx
import jwt
import numpy as np
import pytest
from conftest import running_app
from fake_vonage import (
    APPLICATION_ID,
    FRAME,
    SECRET,
    FakeVonageCaller,
    FakeVonageRest,
    application_key,
    pcm_dominant_freq,
    pcm_silence,
    pcm_spans,
    pcm_tone,
    signed_jwt,
    webhook,
    websocket_of,
)
from helpers import dominant_freq, wait_until

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve.carriers import CarrierError
from telephony.serve.carriers import vonage as vonage_rest
from telephony.serve.direct_lane import PLAIN_ASGI, DirectWebSocketProtocol
from telephony.settings import Settings
from telephony.wire import twilio as tw
from telephony.wire import vonage as vonage_wire
from telephony.wire.path_parameters import parameters_from_segment

API_KEY = "sk-test-secret-key-123"
CALL_UUID = "aaaaaaaa-1111-2222-3333-444455556666"
ANSWER = {"uuid": CALL_UUID, "conversation_uuid": "CON-aaaaaaaa-0000-0000-0000-000000000000",
          "from": "15551230000", "to": "15559870000", "region_url": "https://api-us-3.vonage.com"}


def settings_for(server: ScriptedRealtimeServer | None, secret: str = SECRET, **overrides) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url if server else "ws://127.0.0.1:9",
                    realtime_api_key=API_KEY, vonage_signature_secret=secret, **overrides)


async def answered(host: str, call_uuid: str = CALL_UUID) -> tuple[str, dict]:
    r = await webhook(host, "/vonage/voice", {**ANSWER, "uuid": call_uuid})
    assert r.status_code == 200, r.text
    url, endpoint = websocket_of(r.json(), host)
    return url, endpoint["headers"]


def test_our_jwt_check_agrees_with_vonage_sdk():
    from vonage_jwt import verify_signature

    body = json.dumps(ANSWER).encode()
    good = signed_jwt(body)
    assert verify_signature(good, SECRET) and vonage_rest.signature_refusal(
        SECRET, {"authorization": f"Bearer {good}"}, body, time.time()) is None
    forged = signed_jwt(body, secret="another-secret-another-secret-another")
    assert not verify_signature(forged, SECRET)
    assert vonage_rest.signature_refusal(SECRET, {"authorization": f"Bearer {forged}"}, body, 0) == \
        "JWT signature does not match"
    # The SDK stops at the signature; the body is ours to check against payload_hash.
    other_body = json.dumps({**ANSWER, "to": "15550000000"}).encode()
    assert verify_signature(good, SECRET)
    assert vonage_rest.signature_refusal(SECRET, {"authorization": f"Bearer {good}"}, other_body,
                                         time.time()) == "payload_hash does not match the request"
    old = signed_jwt(body, iat=int(time.time()) - 3600)
    assert "issued" in vonage_rest.signature_refusal(SECRET, {"authorization": f"Bearer {old}"}, body,
                                                     time.time())


async def test_webhooks_refused_unless_signed_and_off_without_a_secret(profile):
    async with running_app(settings_for(None, secret="")) as (app, host):
        off = await webhook(host, "/vonage/voice", ANSWER)
        off_event = await webhook(host, "/vonage/event", {"status": "started"})
    for r in (off, off_event):
        assert r.status_code == 503 and "VONAGE_SIGNATURE_SECRET" in r.text and "wss" not in r.text
    async with running_app(settings_for(None)) as (app, host):
        unsigned = await webhook(host, "/vonage/voice", ANSWER, secret=None)
        forged = await webhook(host, "/vonage/voice", ANSWER, secret="not-the-secret-not-the-secret-not-the")
        wrong_hash = await webhook(host, "/vonage/voice", ANSWER, payload_hash=hashlib.sha256(b"other").hexdigest())
        good = await webhook(host, "/vonage/voice", ANSWER)
        get = await webhook(host, "/vonage/voice", ANSWER, method="GET")
        get_wrong_hash = await webhook(host, "/vonage/voice", ANSWER, method="GET", payload_hash="0" * 64)
        not_json = await httpx.AsyncClient().post(
            f"http://{host}/vonage/voice", content=b"[1,",
            headers={"Authorization": f"Bearer {signed_jwt(b'[1,')}", "Content-Type": "application/json"})
    for refused in (unsigned, forged, wrong_hash, get_wrong_hash):
        assert refused.status_code == 403 and "wss" not in refused.text and "connect" not in refused.text
    assert "Bearer" in unsigned.text and "payload_hash" in wrong_hash.text
    assert not_json.status_code == 400
    for r in (good, get):
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    connect, talk = good.json()
    assert talk == {"action": "talk", "text": profile.fallback}  # heard if the websocket ends without a hang-up
    assert connect["action"] == "connect" and connect["eventUrl"] == ["https://bridge.example.com/vonage/event"]
    (endpoint,) = connect["endpoint"]
    assert endpoint["type"] == "websocket" and endpoint["content-type"] == "audio/l16;rate=16000"
    assert endpoint["uri"].startswith("wss://bridge.example.com/vonage/media-stream/s1.")
    headers = endpoint["headers"]
    assert len(json.dumps(headers, separators=(",", ":"))) <= 512
    assert headers["uuid"] == CALL_UUID and headers["call_sid"] == vonage_wire.call_sid_for(CALL_UUID)
    assert headers["from"] == "+15551230000" and headers["to"] == "+15559870000" and headers["carrier"] == "vonage"
    assert headers["token"] and app.state.stream_tokens.verify(headers, headers["call_sid"], time.time()) is None
    # The NCCO as Vonage's SDK models it (it would refuse a field it does not know the shape of).
    from vonage_voice.models.ncco import Connect, Talk

    Connect.model_validate({**connect, "randomFromNumber": True})
    Talk.model_validate(talk)


async def test_development_mode_serves_unsigned_and_a_busy_service_says_so():
    async with running_app(settings_for(None, secret="", vonage_validate_signatures=False)) as (app, host):
        r = await webhook(host, "/vonage/voice", ANSWER, secret=None)
        app.state.calls.draining = True
        busy = await webhook(host, "/vonage/voice", ANSWER, secret=None)
    assert r.status_code == 200 and "/vonage/media-stream/s1." in r.text
    assert busy.status_code == 200 and busy.json() == [{"action": "talk", "text": vonage_wire.BUSY_TEXT}]


async def test_audio_both_ways_in_640_byte_frames_with_barge_in(profile):
    script = Script(response_ms=3000, speed=1.2)
    caller = pcm_silence(1.0) + pcm_tone(500, 1.0) + pcm_silence(3.6)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(settings_for(server, audio_codec="g711_ulaw")) as (app, host):
        url, headers = await answered(host)
        result = await FakeVonageCaller(url, headers, caller_audio=caller).run()
        await wait_until(lambda: server.connections[0].closed, "the upstream socket to close")
    (conn,) = server.connections
    # In: 16 kHz L16 → the model's μ-law 8 kHz, the tone where the caller spoke, at its pitch.
    heard_by_model = b"".join(base64.b64decode(e["audio"]) for e in conn.of_type("input_audio_buffer.append"))
    assert len(heard_by_model) >= 4.0 * 8000
    assert dominant_freq(heard_by_model[int(1.1 * 8000):int(1.9 * 8000)]) == pytest.approx(500, abs=5)
    assert dominant_freq(heard_by_model[int(0.1 * 8000):int(0.9 * 8000)]) == 0.0  # silence stays silence
    # Out: only 640-byte binary frames and the one clear.
    assert result.frames and all(len(frame) == FRAME for _, frame in result.frames)
    assert [text for _, text in result.texts if text != {"action": "clear"}] == []
    spans = pcm_spans(result.agent)
    assert len(spans) == 2, spans
    (g_start, g_end), (r_start, r_end) = spans
    assert pcm_dominant_freq(result.agent[int(g_start * 32000):int(g_end * 32000)]) == pytest.approx(440, abs=5)
    assert pcm_dominant_freq(result.agent[int(r_start * 32000):int(r_end * 32000)]) == pytest.approx(660, abs=5)
    # Barge-in: one clear within 300 ms of the caller starting at 1.0 s; the greeting stops there.
    assert len(result.clears) == 1 and 1.0 <= result.clears[0] <= 1.3, result.clears
    assert g_end <= result.clears[0] + 0.03
    after = b"".join(frame for at, frame in result.frames if at >= result.clears[0])
    assert after and not any(435 < pcm_dominant_freq(after[k:k + 3200]) < 445
                             for k in range(0, len(after) - 3200, 3200))
    # What was heard comes from the playout clock: the truncate says what the caller heard of it.
    (truncate,) = conn.of_type("conversation.item.truncate")
    assert truncate["audio_end_ms"] == pytest.approx((g_end - g_start) * 1000, abs=100)


@pytest.mark.parametrize("ws", [DirectWebSocketProtocol, PLAIN_ASGI])
async def test_keypad_digits_reach_the_model_and_the_greeting_goes_out_in_binary_frames(profile, ws):
    # Both ways out of the bridge: the direct lane's write, and plain ASGI's send_bytes.
    script = Script(response_ms=400, speed=5.0, respond_to_turns=False)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server), ws=ws) as (app, host):
        url, headers = await answered(host)
        result = await FakeVonageCaller(url, headers, caller_audio=pcm_silence(3.0),
                                        dtmf_at={0.8: "4", 0.9: "2", 1.0: "#"}).run()
    texts = [e["item"]["content"][0]["text"] for e in server.connections[0].of_type("conversation.item.create")]
    assert texts == ["The caller pressed 42# on the keypad."]
    assert result.frames and all(len(frame) == FRAME for _, frame in result.frames)
    (start, end), *answers = pcm_spans(result.agent)  # the greeting; then the answer to the keys
    assert end - start == pytest.approx(0.4, abs=0.04) and len(answers) <= 1
    assert pcm_dominant_freq(result.agent[int(start * 32000):int(end * 32000)]) == pytest.approx(440, abs=5)


async def test_a_stream_with_edited_headers_or_another_rate_is_refused(profile):
    async with ScriptedRealtimeServer() as server, running_app(settings_for(server)) as (app, host):
        url, headers = await answered(host)
        edited = await FakeVonageCaller(url, {**headers, "to": "+15550000000"}, caller_audio=pcm_silence(0.5)).run()
        url, headers = await answered(host, "bbbbbbbb-1111-2222-3333-444455556666")
        narrow = await FakeVonageCaller(url, headers, caller_audio=pcm_silence(0.5),
                                        content_type="audio/l16;rate=8000").run()
        bare = await FakeVonageCaller(url.rsplit("/", 1)[0], headers, caller_audio=pcm_silence(0.5)).run()
    for refused in (edited, narrow, bare):
        assert refused.closed_by_app and not refused.frames
    assert not server.connections


async def test_outbound_call_through_rest_then_end_call_hangs_up_after_the_goodbye(profile, tmp_path):
    pem, public_key = application_key()
    (tmp_path / "private.key").write_bytes(pem)
    rest = FakeVonageRest(public_key)
    script = Script(response_ms=1000, speed=5.0, respond_to_turns=False,
                    tool_calls={0: ("end_call", '{"reason": "done"}')})
    long_instructions = "Speak like a ship's captain. " * 40  # over the headers' 512 bytes: rides in the URL
    async with rest.running(), ScriptedRealtimeServer(script) as server, running_app(settings_for(
            server, vonage_application_id=APPLICATION_ID, vonage_private_key=tmp_path / "private.key",
            vonage_api_base_url=rest.base_url, calls_api_token="calls-token",
            public_url="https://bridge.example.com")) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/calls", headers={"Authorization": "Bearer calls-token"},
                                  json={"to": "+15557654321", "from": "+15559870000", "carrier": "vonage",
                                        "machine_detection": True, "instructions": long_instructions})
        assert r.status_code == 201, r.text
        placed = r.json()
        assert placed["carrier"] == "vonage" and placed["carrier_call_id"] == rest.call_uuid
        (method, path, body, claims) = rest.requests[0]
        assert (method, path) == ("POST", "/v1/calls")
        assert set(claims) == {"application_id", "iat", "exp", "jti"} and claims["exp"] - claims["iat"] == 900
        assert body["to"] == [{"type": "phone", "number": "15557654321"}]
        assert body["from"] == {"type": "phone", "number": "15559870000"}
        assert body["machine_detection"] == "continue" and body["answer_method"] == "POST"
        assert body["event_url"] == ["https://bridge.example.com/vonage/event"]
        answer = urlsplit(body["answer_url"][0])
        assert answer.netloc == "bridge.example.com" and answer.path == "/vonage/voice"
        # The callee answers: Vonage fetches the answer URL (ours, signed) with the call's uuid.
        fields = {**ANSWER, "uuid": rest.call_uuid, "from": "15559870000", "to": "15557654321"}
        tampered = await webhook(host, "/vonage/voice?" + answer.query.replace("captain", "pirate"), fields)
        assert tampered.status_code == 403
        ncco = await webhook(host, f"/vonage/voice?{answer.query}", fields)
        assert ncco.status_code == 200, ncco.text
        url, endpoint = websocket_of(ncco.json(), host)
        assert endpoint["headers"] == {"uuid": rest.call_uuid}
        params = parameters_from_segment(url.rsplit("/", 1)[1])
        assert params["call_sid"] == placed["call_sid"] and params["instructions"] == long_instructions.strip()
        assert params["uuid"] == rest.call_uuid
        caller = FakeVonageCaller(url, endpoint["headers"], caller_audio=b"", duration_s=4.0)
        rest.on_hangup = caller.hang_up  # Vonage ends the leg, and with it the websocket
        result = await caller.run()
        hangups = [(m, p, b) for m, p, b, _ in rest.requests[1:]]
    assert hangups == [("PUT", f"/v1/calls/{rest.call_uuid}", {"action": "hangup"})]
    # The hang-up came once the goodbye had played out (by the playout clock), not before it.
    (g_start, g_end), = pcm_spans(result.agent)
    assert g_end - g_start == pytest.approx(1.0, abs=0.06)
    assert g_end - 0.05 <= result.ended_at <= g_end + 0.5, (g_end, result.ended_at)


async def test_amd_verdict_reaches_the_call_and_voicemail_is_left(profile, tmp_path):
    pem, public_key = application_key()
    (tmp_path / "private.key").write_bytes(pem)
    rest = FakeVonageRest(public_key)
    script = Script(response_ms=2000, speed=5.0, respond_to_turns=False)
    async with rest.running(), ScriptedRealtimeServer(script) as server, running_app(settings_for(
            server, vonage_application_id=APPLICATION_ID, vonage_private_key=tmp_path / "private.key",
            vonage_api_base_url=rest.base_url)) as (app, host):
        url, headers = await answered(host)
        call = asyncio.create_task(FakeVonageCaller(url, headers, caller_audio=b"", duration_s=8.0).run())
        await wait_until(lambda: server.connections and any(
            e.get("type") == "response.done" for e in server.connections[0].sent), "the greeting's response.done")
        amd = {"call_uuid": CALL_UUID, "status": "machine", "conversation_uuid": ANSWER["conversation_uuid"]}
        assert (await webhook(host, "/vonage/event", amd, secret=None)).status_code == 403
        assert (await webhook(host, "/vonage/event", amd)).status_code == 204
        await wait_until(lambda: any(b.get("action") == "hangup" for _, _, b, _ in rest.requests), "the hang-up",
                         timeout=8)
        call.cancel()
    creates = server.connections[0].of_type("response.create")
    assert len(creates) == 2 and profile.voicemail in creates[1]["response"]["instructions"]
    assert [(m, p) for m, p, *_ in rest.requests] == [("PUT", f"/v1/calls/{CALL_UUID}")]


async def test_rest_transfer_hang_up_of_an_ended_call_and_a_bad_key(tmp_path):
    pem, public_key = application_key()
    (tmp_path / "private.key").write_bytes(pem)
    rest = FakeVonageRest(public_key)
    async with rest.running():
        control = vonage_rest.VonageControl(
            Settings(vonage_application_id=APPLICATION_ID, vonage_private_key=tmp_path / "private.key",
                     vonage_api_base_url=rest.base_url), caller_id=lambda call_id: "+15559870000")
        try:
            await control.transfer(CALL_UUID, "+15550001111")
            await control.transfer(CALL_UUID, "sip:desk@pbx.example.com")
            rest.hangup_status = 404  # already over
            await control.hang_up(CALL_UUID)
            rest.hangup_status = 401
            with pytest.raises(CarrierError) as refused:
                await control.hang_up(CALL_UUID)
        finally:
            await control.aclose()
    assert refused.value.status == 401
    phone, sip = (body for _, _, body, _ in rest.requests[:2])
    assert phone == {"action": "transfer", "destination": {"type": "ncco", "ncco": [
        {"action": "connect", "from": "15559870000", "endpoint": [{"type": "phone", "number": "15550001111"}]}]}}
    assert sip["destination"]["ncco"][0]["endpoint"] == [{"type": "sip", "uri": "sip:desk@pbx.example.com"}]
    # Vonage's SDK models accept the NCCO we send.
    from vonage_voice.models.ncco import Connect

    for body in (phone, sip):
        action = dict(body["destination"]["ncco"][0])
        action["from_"] = action.pop("from")  # the model's field name ("from" is its alias out)
        assert Connect.model_validate(action).model_dump(by_alias=True, exclude_none=True) == \
            body["destination"]["ncco"][0]
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(CarrierError) as bad:
        vonage_rest.VonageControl(Settings(vonage_application_id=APPLICATION_ID,
                                           vonage_private_key=tmp_path / "bad.key"))
    assert bad.value.status == 503 and "not a key" not in str(bad.value)


def test_application_jwt_has_the_claims_vonage_sdk_sets(tmp_path):
    from vonage_jwt import JwtClient

    pem, public_key = application_key()
    (tmp_path / "private.key").write_bytes(pem)
    control = vonage_rest.VonageControl(Settings(vonage_application_id=APPLICATION_ID,
                                                 vonage_private_key=tmp_path / "private.key"))
    ours = jwt.decode(control.application_jwt(), public_key, algorithms=["RS256"])
    theirs = jwt.decode(JwtClient(APPLICATION_ID, pem.decode()).generate_application_jwt(), public_key,
                        algorithms=["RS256"])
    assert set(ours) == set(theirs) and ours["application_id"] == APPLICATION_ID
    assert ours["exp"] - ours["iat"] == theirs["exp"] - theirs["iat"]
    assert jwt.get_unverified_header(control.application_jwt())["alg"] == "RS256"


# --- The wire alone: sans-I/O, so its playout clock is driven frame by frame ---

def _connected(wire: vonage_wire.VonageMedia) -> tw.Start:
    (start,) = wire.parse(json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                                      "uuid": CALL_UUID, "call_sid": "CA" + "1" * 32, "token": "t"}))
    return start


def _ulaw(ms: int) -> str:
    t = np.arange(8 * ms) / 8000
    import audioop

    return base64.b64encode(audioop.lin2ulaw((8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes(),
                                             2)).decode()


def test_wire_marks_echo_by_the_playout_clock_and_a_held_tail_goes_out_padded():
    wire = vonage_wire.VonageMedia()
    start = _connected(wire)
    assert (start.call_sid, start.carrier_call_id) == ("CA" + "1" * 32, CALL_UUID)
    assert start.custom_parameters == {"uuid": CALL_UUID, "call_sid": "CA" + "1" * 32, "token": "t"}
    frames = wire.encode(tw.SendMedia(_ulaw(50)), CALL_UUID)  # 50 ms: two whole frames, 10 ms held
    assert [len(f) for f in frames] == [FRAME, FRAME]
    assert wire.encode(tw.SendMark("1"), CALL_UUID) == ()  # no marks on Vonage: the clock echoes it
    line = bytes(FRAME)
    assert [e for e in wire.parse(line) if isinstance(e, tw.Mark)] == []  # 20 ms played of 50
    assert wire.released() == ()  # 20 ms still queued at Vonage: the held 10 ms waits for more
    assert [e for e in wire.parse(line) if isinstance(e, tw.Mark)] == []  # 40 ms: the mark is at 50
    (tail,) = wire.released()  # Vonage's buffer is dry: the held 10 ms go out, padded to 20 ms
    assert len(tail) == FRAME and not any(tail[FRAME // 2 + 64:])  # its second half is silence
    assert [e for e in wire.parse(line) if isinstance(e, tw.Mark)] == [tw.Mark("1")]
    assert wire.released() == ()
    # A clear: Vonage drops what it holds, the marks pending are echoed at once (Twilio's rule).
    wire.encode(tw.SendMedia(_ulaw(100)), CALL_UUID)
    wire.encode(tw.SendMark("2"), CALL_UUID)
    wire.encode(tw.SendMedia(_ulaw(100)), CALL_UUID)
    wire.encode(tw.SendMark("3"), CALL_UUID)
    assert wire.encode(tw.SendClear(), CALL_UUID) == ('{"action":"clear"}',)
    assert wire.parse('{"event":"websocket:cleared"}') == [tw.Mark("2"), tw.Mark("3")]
    assert wire.released() == ()  # nothing held after a clear


def test_wire_converts_16k_to_the_core_8k_without_aliasing_and_reads_dtmf():
    import audioop

    wire = vonage_wire.VonageMedia()
    _connected(wire)

    def heard(pcm: bytes) -> bytes:
        out = b""
        for k in range(0, len(pcm), FRAME):
            (media,) = [e for e in wire.parse(pcm[k:k + FRAME]) if isinstance(e, tw.Media)]
            out += base64.b64decode(media.payload)
        return out

    assert dominant_freq(heard(pcm_tone(1000, 0.5))[800:]) == pytest.approx(1000, abs=5)
    # 6 kHz is above the 8 kHz line's band: filtered out, not folded to 2 kHz.
    folded = np.frombuffer(audioop.ulaw2lin(heard(pcm_tone(6000, 0.5))[800:], 2), "<i2").astype(float)
    assert np.sqrt(np.mean(folded ** 2)) < 100
    assert wire.parse('{"event":"websocket:dtmf","digit":"7","duration":260}') == [tw.Dtmf("7")]
    with pytest.raises(tw.TwilioProtocolError):
        wire.parse('{"event":"websocket:dtmf","digit":"77"}')
