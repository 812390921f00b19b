"""SignalWire over real sockets: signed cXML webhooks (signatures made by the twilio package's
validator, which SignalWire's own SDK calls for form webhooks), the media websocket as
PROTOCOLS-carriers.md gives it (frames without a top-level streamSid), and the LaML REST API
(the fake Twilio REST app, mounted under /api/laml as SignalWire serves it)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
import xml.etree.ElementTree as ET

import httpx
import numpy as np
import pytest
import websockets
from conftest import running_app, serve_app
from helpers import ulaw_silence, ulaw_tone
from starlette.applications import Starlette
from starlette.routing import Mount
from twilio.request_validator import RequestValidator

from telephony.offline.fake_twilio_rest import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve.carriers.signalwire import SignalWireControl
from telephony.settings import Settings
from telephony.wire import signalwire as wire

SIGNING_KEY = "PSK_signalwire-signing-key-secret"
PUBLIC = "https://bridge.example.com"


@contextlib.asynccontextmanager
async def fake_space():
    fake = FakeTwilio()
    async with serve_app(Starlette(routes=[Mount("/api/laml", app=fake.app())])) as host:
        fake.base_url = f"http://{host}"
        yield fake


def settings(server, space: str = "", **kw) -> Settings:
    return Settings(**{"realtime_url": server.url, "realtime_api_key": "sk-test", "audio_codec": "g711_ulaw",
                       "twilio_validate_signatures": False, "public_url": PUBLIC,
                       "signalwire_signing_key": SIGNING_KEY, "signalwire_project_id": ACCOUNT_SID,
                       "signalwire_token": AUTH_TOKEN, "signalwire_space_url": space or None,
                       "calls_api_token": "calls-token", **kw})


def signed(path: str, form: dict[str, str], key: str = SIGNING_KEY, query: str = "") -> dict[str, str]:
    url = PUBLIC + path + (f"?{query}" if query else "")
    return {"X-SignalWire-Signature": RequestValidator(key).compute_signature(url, form)}


def voice_form(call_id: str) -> dict[str, str]:
    return {"AccountSid": ACCOUNT_SID, "CallSid": call_id, "From": "+15550100001", "To": "+15550100002",
            "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}


def dominant_hz(ulaw: bytes) -> float:
    import audioop
    pcm = np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / 8000)[int(np.argmax(spectrum))])


async def test_webhooks_are_refused_unsigned_forged_or_without_a_key(profile):
    call_id = str(uuid.uuid4())
    form = voice_form(call_id)
    async with ScriptedRealtimeServer(Script()) as server:
        async with running_app(settings(server)) as (app, host), httpx.AsyncClient(base_url=f"http://{host}") as c:
            for headers in ({}, signed(wire.VOICE_PATH, form, key="another-key"),
                            signed(wire.VOICE_PATH, {**form, "To": "+15559999999"})):
                r = await c.post(wire.VOICE_PATH, data=form, headers=headers)
                assert r.status_code == 403 and "wss://" not in r.text and "Stream" not in r.text
            r = await c.post(wire.VOICE_PATH, content=json.dumps(form), headers={"content-type": "application/json"})
            assert r.status_code == 400
        async with running_app(settings(server, signalwire_signing_key="")) as (app, host), \
                httpx.AsyncClient(base_url=f"http://{host}") as c:
            r = await c.post(wire.VOICE_PATH, data=form, headers=signed(wire.VOICE_PATH, form))
            assert r.status_code == 503 and "SIGNALWIRE_SIGNING_KEY" in r.text


async def test_a_call_both_ways_with_barge_in_and_a_key_press(profile):
    """The signed webhook's cXML opens the stream; the agent's greeting is heard (440 Hz), the
    caller talking over it clears SignalWire's queue, a key reaches the model."""
    call_id = str(uuid.uuid4())
    form = voice_form(call_id)
    script = Script(response_ms=3000, speed=1.5)
    async with ScriptedRealtimeServer(script) as server, running_app(settings(server)) as (app, host):
        async with httpx.AsyncClient(base_url=f"http://{host}") as c:
            r = await c.post(wire.VOICE_PATH, data=form, headers=signed(wire.VOICE_PATH, form))
        assert r.status_code == 200, r.text
        stream = ET.fromstring(r.text).find("./Connect/Stream")
        url = stream.get("url")
        assert url.startswith("wss://bridge.example.com/signalwire/media-stream/") and "?" not in url
        parameters = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
        assert parameters["carrier"] == "signalwire" and parameters["call_sid"] == wire.call_sid_for(call_id)
        stream_sid = "MZ" + uuid.uuid4().hex
        heard, sent_after_clear, clears = bytearray(), [], []
        caller = ulaw_silence(1.2) + ulaw_tone(500, 1.0) + ulaw_silence(1.5)
        local = f"ws://{host}" + url.removeprefix("wss://bridge.example.com")
        async with websockets.connect(local) as ws:
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "0.2.0"}))
            await ws.send(json.dumps({"event": "start", "sequenceNumber": "1", "start": {
                "streamSid": stream_sid, "accountSid": ACCOUNT_SID, "callSid": call_id, "tracks": ["inbound"],
                "customParameters": parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))

            # SignalWire's side of playout: audio plays at real time, a mark is echoed once the
            # audio before it has played, a clear empties the queue and echoes the pending marks.
            queued, marks, clock = bytearray(), [], {"played": 0, "at": None}

            def play(now: float) -> None:
                if clock["at"] is not None:
                    n = min(len(queued), int((now - clock["at"]) * 8000))
                    heard.extend(queued[:n])
                    del queued[:n]
                    clock["played"] += n
                clock["at"] = now if queued else None

            async def echo_due() -> None:
                while marks and marks[0][1] <= clock["played"]:
                    name, _ = marks.pop(0)
                    await ws.send(json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}))

            async def read():
                loop = asyncio.get_running_loop()
                async for raw in ws:
                    msg = json.loads(raw)
                    assert msg["streamSid"] == stream_sid  # every frame we send names the stream
                    play(loop.time())
                    if msg["event"] == "media":
                        audio = base64.b64decode(msg["media"]["payload"])
                        if clears:
                            sent_after_clear.append(audio)
                        queued.extend(audio)
                        clock["at"] = clock["at"] or loop.time()
                    elif msg["event"] == "clear":
                        clears.append(msg)
                        clock["played"] += len(queued)  # what is dropped counts as gone for the marks
                        queued.clear()
                    elif msg["event"] == "mark":
                        marks.append((msg["mark"]["name"], clock["played"] + len(queued)))
                    await echo_due()

            async def playout():
                while True:
                    await asyncio.sleep(0.02)
                    play(asyncio.get_running_loop().time())
                    await echo_due()
            reader, player = asyncio.create_task(read()), asyncio.create_task(playout())
            for n in range(0, len(caller), 160):  # 20 ms frames, no top-level streamSid (as documented)
                await ws.send(json.dumps({"event": "media", "sequenceNumber": str(n // 160 + 2), "media": {
                    "track": "inbound", "chunk": str(n // 160 + 1), "timestamp": str(n // 8),
                    "payload": base64.b64encode(caller[n:n + 160]).decode()}}))
                if n == 160 * 40:  # a key at 0.8 s: its burst is told to the model after a quiet second
                    await ws.send(json.dumps({"event": "dtmf", "streamSid": stream_sid,
                                              "dtmf": {"duration": 200, "digit": "8"}}))
                await asyncio.sleep(0.02)
            await ws.send(json.dumps({"event": "stop", "sequenceNumber": "999"}))
            await asyncio.wait_for(reader, 5)
            player.cancel()
        # Counted under its carrier's name while it ran, and no longer once it has ended.
        for _ in range(50):
            records = [r for r in app.state.metrics.render().decode().splitlines()
                       if r.startswith("telephony_active_calls_by_route")]
            if 'telephony_active_calls_by_route{route="signalwire"} 0.0' in records:
                break
            await asyncio.sleep(0.1)
        assert 'telephony_active_calls_by_route{route="signalwire"} 0.0' in records, records
    conn = server.connections[0]
    assert len(heard) > 8000 and abs(dominant_hz(bytes(heard[:8000])) - 440) < 10  # the greeting, heard
    assert len(clears) == 1  # the caller spoke over it: SignalWire's queue cleared
    after = b"".join(sent_after_clear)  # nothing of the greeting after the clear: the answer's 660 Hz
    assert len(after) > 4000 and abs(dominant_hz(after[:4000]) - 660) < 10
    assert conn.of_type("conversation.item.truncate") or conn.of_type("conversation.item.delete")
    pressed = [c["text"] for e in conn.of_type("conversation.item.create") if e["item"]["type"] == "message"
               for c in e["item"]["content"]]
    assert "The caller pressed 8 on the keypad." in pressed
    assert len(conn.of_type("input_audio_buffer.append")) > 100


async def test_outbound_hang_up_and_transfer_through_the_laml_api():
    async with ScriptedRealtimeServer(Script()) as server, fake_space() as space, \
            running_app(settings(server, space.base_url)) as (app, host):
        async with httpx.AsyncClient(base_url=f"http://{host}") as c:
            r = await c.post("/calls", json={"to": "+15550100002", "from": "+15550100001", "carrier": "signalwire",
                                             "machine_detection": True},
                             headers={"Authorization": "Bearer calls-token"})
            assert r.status_code == 201, r.text
            placed = r.json()
            (created,) = space.created
            assert created["To"] == "+15550100002" and created["From"] == "+15550100001"
            answer = created["Url"]
            assert answer.startswith(PUBLIC + wire.OUTBOUND_ANSWER_PATH + "?")
            assert created["AsyncAmdStatusCallback"] == PUBLIC + wire.AMD_CALLBACK_PATH
            assert placed["carrier"] == "signalwire"
            assert placed["call_sid"] == wire.call_sid_for(placed["carrier_call_id"])
            # Answered: SignalWire fetches the answer URL (signed), the cXML opens our stream.
            query = answer.split("?", 1)[1]
            form = {**voice_form(placed["carrier_call_id"]), "Direction": "outbound-api"}
            r = await c.post(f"{wire.OUTBOUND_ANSWER_PATH}?{query}", data=form,
                             headers=signed(wire.OUTBOUND_ANSWER_PATH, form, query=query))
            assert r.status_code == 200 and "/signalwire/media-stream/" in r.text, r.text
            forged = query.replace("to=", "to=%2B1999")
            r = await c.post(f"{wire.OUTBOUND_ANSWER_PATH}?{forged}", data=form,
                             headers=signed(wire.OUTBOUND_ANSWER_PATH, form, query=forged))
            assert r.status_code == 403
        control = SignalWireControl(settings(server, space.base_url))
        try:
            await control.hang_up("c0ffee00-1111-2222-3333-444455556666")
            await control.transfer("c0ffee00-1111-2222-3333-444455556666", "+15550109999")
        finally:
            await control.aclose()
        (hung, _, _), (moved, form, _) = space.updates
        assert hung == moved == "c0ffee00-1111-2222-3333-444455556666"
        assert "<Dial" in form["Twiml"] and "+15550109999" in form["Twiml"]


def test_the_wire_fills_in_the_stream_sid_and_refuses_a_start_without_a_call():
    media = wire.SignalWireMedia()
    with pytest.raises(Exception, match="callSid"):
        media.parse(json.dumps({"event": "start", "start": {"streamSid": "MZ1", "customParameters": {}}}))
    (start,) = media.parse(json.dumps({"event": "start", "start": {
        "streamSid": "MZ1", "callSid": "abc-123", "customParameters": {"call_sid": "x"}}}))
    assert start.stream_sid == "MZ1" and start.carrier_call_id == "abc-123"
    assert start.call_sid == wire.call_sid_for("abc-123")  # an inbound call's sid is never the caller's pick
    (frame,) = media.parse(json.dumps({"event": "media", "media": {"payload": "/w==", "timestamp": "20"}}))
    assert frame.stream_sid == "MZ1"
