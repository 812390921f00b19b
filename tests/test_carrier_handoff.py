"""SignalWire, Plivo and Vonage calls survive a deploy as Twilio's do. Two real app instances
share a real Redis; A drains (as on SIGTERM) during a call and moves it through the carrier's REST
API (a fake on loopback): SignalWire's LaML update ``Url``, Plivo's A-leg transfer ``aleg_url``,
Vonage's transfer to an inline NCCO. The test then does what the carrier does: stops the old
stream, fetches that URL (signed, from B) or reads that NCCO, and opens the stream the markup
names. B's model gets the conversation so far, not a greeting, and the caller hears B. A carrier
that cannot move a call (Telnyx) is drained as before."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import running_app
from fake_plivo import FakePlivoCaller, FakePlivoRest, post_webhook, stream_from_xml
from helpers import active_spans, ulaw_silence, ulaw_tone
from test_plivo import FORM as PLIVO_FORM
from test_plivo import settings_for as plivo_settings
from test_shared_state import until
from test_signalwire import PUBLIC, fake_space, signed, voice_form
from test_signalwire import settings as signalwire_settings

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.wire import plivo as plivo_wire
from telephony.wire import signalwire as signalwire_wire

SECRET = "stream-secret-shared-by-instances"
FIRST_CALLER = ulaw_silence(1.0) + ulaw_tone(500, 0.6)
SECOND_CALLER = ulaw_silence(0.8) + ulaw_tone(700, 0.6)


def local(url: str, host: str) -> str:
    """The stream URL as the carrier would open it, on the instance its router picked."""
    return f"ws://{host}" + url.removeprefix(PUBLIC.replace("https", "wss"))


def check_resumed(upstream: ScriptedRealtimeServer, b, result_b) -> None:
    """B's session started from the conversation so far (no second greeting) and was heard."""
    conn_a, conn_b = upstream.connections
    earlier = [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in conn_b.of_type("conversation.item.create")]
    assert [role for role, _ in earlier] == ["assistant", "user", "assistant"], earlier
    assert earlier[1][1].startswith("a 500 Hz tone")
    types = conn_b.received_types()
    assert types.index("conversation.item.create") < types.index("input_audio_buffer.append")
    assert active_spans(result_b.agent), "the caller heard nothing from B"
    assert 'telephony_handoffs_total{outcome="resumed"} 1.0' in b.state.metrics.render().decode()


async def test_a_signalwire_call_moves_to_another_instance_on_a_deploy(redis_server, profile):
    call_id = str(uuid.uuid4())
    form = voice_form(call_id)
    async with ScriptedRealtimeServer(Script(response_ms=1000, speed=2.0)) as upstream, fake_space() as space:
        both = signalwire_settings(upstream, space.base_url, redis_url=redis_server.url, stream_secret=SECRET)
        async with running_app(both) as (a, host_a), running_app(both) as (b, host_b), httpx.AsyncClient() as c:
            r = await c.post(f"http://{host_a}{signalwire_wire.VOICE_PATH}", data=form,
                             headers=signed(signalwire_wire.VOICE_PATH, form))
            stream = ET.fromstring(r.text).find("./Connect/Stream")
            parameters = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
            first = TwilioCallSimulator(local(stream.get("url"), host_a), call_sid=call_id, duration_s=30,
                                        custom_parameters=parameters, caller_audio=FIRST_CALLER)
            call_a = asyncio.create_task(first.run())
            await asyncio.sleep(4.0)  # the agent has greeted, heard the caller and answered
            drain = asyncio.create_task(a.state.calls.drain(3.0))  # what SIGTERM starts
            moved_id, update, _ = await until(lambda: _first(space.updates), 5, "SignalWire's call update")
            first.redirect()  # SignalWire: the old stream stops, the call fetches the new URL
            answer = urlsplit(update["Url"])
            fetched = {**form, "CallStatus": "in-progress"}
            r = await c.post(f"http://{host_b}{answer.path}?{answer.query}", data=fetched,
                             headers=signed(answer.path, fetched, query=answer.query))
            assert r.status_code == 200, r.text
            stream = ET.fromstring(r.text).find("./Connect/Stream")
            parameters = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
            second = TwilioCallSimulator(local(stream.get("url"), host_b), call_sid=call_id, duration_s=4.0,
                                         custom_parameters=parameters, caller_audio=SECOND_CALLER)
            result_a, result_b = await asyncio.gather(call_a, second.run())
            await asyncio.wait_for(drain, 10)
            forged = await c.post(f"http://{host_b}{answer.path}?{answer.query.replace('resume=1', 'resume=2')}",
                                  data=fetched, headers=signed(answer.path, fetched, query=answer.query))
    assert moved_id == call_id and update["Method"] == "POST"
    assert answer.geturl().startswith(PUBLIC + signalwire_wire.OUTBOUND_ANSWER_PATH + "?")
    assert parameters["resume"] == "1" and parameters["call_sid"] == signalwire_wire.call_sid_for(call_id)
    assert parameters["from"] == "+15550100001" and parameters["carrier"] == "signalwire"
    assert result_a.closed_by_bridge_at is None  # stopped by the carrier, not ended by A
    check_resumed(upstream, b, result_b)
    assert forged.status_code == 403  # the resume URL is signed: not one parameter may change


async def test_a_plivo_call_moves_to_another_instance_on_a_deploy(redis_server, profile):
    rest = FakePlivoRest()
    async with ScriptedRealtimeServer(Script(response_ms=1000, speed=2.0)) as upstream, rest.running():
        both = plivo_settings(upstream, public_url=PUBLIC, redis_url=redis_server.url, stream_secret=SECRET,
                              plivo_api_base_url=rest.base_url, audio_codec="g711_ulaw")
        async with running_app(both) as (a, host_a), running_app(both) as (b, host_b):
            r = await post_webhook(host_a, "/plivo/voice", PLIVO_FORM)
            url, _ = stream_from_xml(r.text, host_a)
            first = FakePlivoCaller(url, call_uuid=PLIVO_FORM["CallUUID"], caller_audio=FIRST_CALLER, duration_s=30)
            call_a = asyncio.create_task(first.run())
            await asyncio.sleep(4.0)
            drain = asyncio.create_task(a.state.calls.drain(3.0))
            method, path, body, _ = await until(lambda: _first([q for q in rest.requests if q[0] == "POST"]), 5,
                                                "Plivo's transfer")
            call_a.cancel()  # Plivo: the A leg leaves the stream to run the new XML
            answer = urlsplit(body["aleg_url"])
            r = await post_webhook(host_b, f"{answer.path}?{answer.query}", {**PLIVO_FORM, "CallStatus": "in-progress"})
            assert r.status_code == 200, r.text
            url, stream = stream_from_xml(r.text, host_b)
            second = FakePlivoCaller(url, call_uuid=PLIVO_FORM["CallUUID"], caller_audio=SECOND_CALLER,
                                     duration_s=4.0)
            result_b = await second.run()
            await asyncio.wait_for(drain, 10)
    parameters = plivo_wire.parameters_from_segment(stream.text.rsplit("/", 1)[1])
    assert path == f"/v1/Account/{both.plivo_auth_id}/Call/{PLIVO_FORM['CallUUID']}/"
    assert body["legs"] == "aleg" and body["aleg_method"] == "POST"
    assert answer.geturl().startswith(PUBLIC + "/plivo/voice?")
    assert parameters["resume"] == "1" and parameters["call_sid"] == plivo_wire.call_sid_for(PLIVO_FORM["CallUUID"])
    check_resumed(upstream, b, result_b)


async def test_a_vonage_call_moves_to_another_instance_on_a_deploy(redis_server, profile, tmp_path):
    """Vonage: the leg is transferred to an inline NCCO whose websocket (signed, resume=1) is B's."""
    from fake_vonage import (
        APPLICATION_ID,
        FakeVonageCaller,
        FakeVonageRest,
        application_key,
        pcm_silence,
        pcm_tone,
        websocket_of,
    )
    from test_vonage import CALL_UUID
    from test_vonage import answered as vonage_answered
    from test_vonage import settings_for as vonage_settings

    from telephony.wire import vonage as vonage_wire
    pem, public_key = application_key()
    (tmp_path / "private.key").write_bytes(pem)
    rest = FakeVonageRest(public_key)
    async with ScriptedRealtimeServer(Script(response_ms=1000, speed=2.0)) as upstream, rest.running():
        both = vonage_settings(upstream, public_url=PUBLIC, redis_url=redis_server.url, stream_secret=SECRET,
                               vonage_application_id=APPLICATION_ID, vonage_private_key=tmp_path / "private.key",
                               vonage_api_base_url=rest.base_url)
        async with running_app(both) as (a, host_a), running_app(both) as (b, host_b):
            url, headers = await vonage_answered(host_a)
            first = FakeVonageCaller(url, headers, caller_audio=pcm_silence(1.0) + pcm_tone(500, 0.6), duration_s=30)
            call_a = asyncio.create_task(first.run())
            await asyncio.sleep(4.0)
            drain = asyncio.create_task(a.state.calls.drain(3.0))
            method, path, body, _ = await until(lambda: _first([q for q in rest.requests if q[0] == "PUT"]), 5,
                                                "Vonage's transfer")
            call_a.cancel()  # Vonage: the leg leaves the old websocket for the new NCCO's
            url, endpoint = websocket_of(body["destination"]["ncco"], host_b)
            second = FakeVonageCaller(url, endpoint["headers"], caller_audio=pcm_silence(0.8) + pcm_tone(700, 0.6),
                                      duration_s=4.0)
            result_b = await second.run()
            await asyncio.wait_for(drain, 10)
    parameters = endpoint["headers"]
    assert path == f"/v1/calls/{CALL_UUID}" and body["action"] == "transfer"
    assert endpoint["uri"].startswith("wss://bridge.example.com/vonage/media-stream/s1.")
    assert endpoint["content-type"] == "audio/l16;rate=16000"
    assert parameters["resume"] == "1" and parameters["uuid"] == CALL_UUID
    assert parameters["call_sid"] == vonage_wire.call_sid_for(CALL_UUID) and parameters["token"]
    check_resumed(upstream, b, result_b)


@pytest.mark.parametrize("rest_api", ["refuses", "absent"])
async def test_a_call_the_carrier_will_not_move_is_ended_as_in_a_drain(redis_server, profile, rest_api):
    """Plivo refuses the transfer (the caller hung up meanwhile), or there is no REST API to ask:
    A ends the call itself, and no saved state is left behind for anyone to resume."""
    rest = FakePlivoRest()
    rest.transfer_status = 404
    async with ScriptedRealtimeServer(Script(response_ms=1000, speed=2.0)) as upstream, rest.running():
        settings = plivo_settings(upstream, public_url=PUBLIC, redis_url=redis_server.url, stream_secret=SECRET,
                                  plivo_api_base_url=rest.base_url, audio_codec="g711_ulaw")
        if rest_api == "absent":
            settings = settings.model_copy(update={"plivo_auth_id": ""})  # signed webhooks, no REST API
        async with running_app(settings) as (a, host_a):
            r = await post_webhook(host_a, "/plivo/voice", PLIVO_FORM)
            url, _ = stream_from_xml(r.text, host_a)
            first = FakePlivoCaller(url, call_uuid=PLIVO_FORM["CallUUID"], caller_audio=FIRST_CALLER, duration_s=30)
            call_a = asyncio.create_task(first.run())
            await asyncio.sleep(2.5)
            await asyncio.wait_for(a.state.calls.drain(3.0), 15)
            result = await asyncio.wait_for(call_a, 5)
            saved = await a.state.shared.take(f"handoff:{plivo_wire.call_sid_for(PLIVO_FORM['CallUUID'])}")
    transfers = [q for q in rest.requests if q[0] == "POST"]
    assert result.closed_by_app  # A ended the call: it was not left hanging
    assert saved is None
    assert len(transfers) == (1 if rest_api == "refuses" else 0)


async def _first(items):
    return items[0] if items else None
