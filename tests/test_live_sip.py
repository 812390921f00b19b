"""GPT-Live over OpenAI's SIP route, through real sockets: the service under uvicorn, OpenAI's Live
side played by the scripted peer (signed webhooks, /v1/live/sessions REST, the /attach sideband),
every message we send checked against the openai package's Live models."""

from __future__ import annotations

import asyncio
import json
import time

from conftest import running_app
from openai.types.webhooks import LiveCallIncomingWebhookEvent, LiveTransportIncomingWebhookEvent

from telephony.offline.live_sip_peer import LiveScript, LiveSipPeer, incoming_event
from telephony.offline.openai_sip_peer import incoming_call_event
from telephony.ops.records import read_records, record_path
from telephony.settings import Settings
from telephony.wire import live_sip

SIP_HEADERS = [{"name": "From", "value": '"Ann" <sip:+15550100001@pstn.example.com>;tag=9'},
               {"name": "To", "value": "<sip:+15550100002@sip.api.openai.com;user=phone>"},
               {"name": "Call-ID", "value": "a84b4c76e66710@pc33.example.com"}]


def app_settings(peer: LiveSipPeer, **kw) -> Settings:
    return Settings(**{"openai_webhook_secret": peer.secret, "openai_base_url": peer.base_url,
                       "openai_api_key": peer.api_key, "twilio_validate_signatures": False, **kw})


async def until(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def test_the_peer_webhooks_are_the_packages_models():
    transport = LiveTransportIncomingWebhookEvent.model_validate_json(incoming_event("live_1", SIP_HEADERS))
    assert transport.data.type == "sip" and not transport.model_extra
    old = LiveCallIncomingWebhookEvent.model_validate_json(incoming_event("live_1", SIP_HEADERS, "live.call.incoming"))
    assert old.data.session_id == "live_1"


def test_the_accept_body_and_sideband_commands_are_the_packages_shapes(profile):
    from openai.types.live import ConnectClientEvent
    from pydantic import TypeAdapter

    from telephony.core.call import Call
    from telephony.wire import realtime as rt

    call = Call(profile, carries_media=False, capabilities=live_sip.capabilities, model="gpt-live-1",
                delegation_model="gpt-5-mini")
    call.begin("live_1", {"call_sid": "live_1"}, 0.0)
    session = live_sip.accept_session(call.session_config(), "gpt-live-1")
    assert session["type"] == "live" and "format" not in session["audio"]
    tools = session["delegation"]["responses"]["tools"]
    assert {t["name"] for t in tools} >= {"end_call"} and "tools" not in session
    adapter = TypeAdapter(ConnectClientEvent)
    for command in (rt.CreateResponse("Greet the caller"), rt.CreateResponse(None), rt.AddUserText("pressed 5"),
                    rt.AddFunctionOutput("call_1", '{"ok": true}'), rt.ConfigureSession(call.session_config())):
        event = adapter.validate_python(json.loads(live_sip.serialize(command)))
        assert not event.model_extra, command


async def test_a_live_call_is_accepted_greeted_steered_and_hung_up_after_the_goodbye(profile, tmp_path):
    async with LiveSipPeer(LiveScript()) as peer, \
            running_app(app_settings(peer, call_records_dir=tmp_path), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await asyncio.wait_for(s.ended.wait(), 15)
        await until(lambda: not app.state.calls._calls)

    assert s.webhook_statuses == [200] and s.accepts == 1
    session = s.accepted
    assert session["model"] == "gpt-live-1" and session["type"] == "live"
    assert session["instructions"].startswith(profile.instructions)
    assert session["audio"] == {"output": {"voice": profile.voice}}
    assert {t["name"] for t in session["delegation"]["responses"]["tools"]} == {"end_call"}
    assert set(peer.authorizations) == {f"Bearer {peer.api_key}"}  # OpenAI's key, REST and sideband
    # The sideband: every message valid by the package's Live models, no session.start, no audio.
    assert s.invalid == [] and s.received
    types = [e["type"] for e in s.received]
    assert types[0] == "session.instructions.append" and profile.greeting in s.received[0]["content"]
    assert "session.start" not in types and "session.input_audio.append" not in types
    (output,) = s.of_type("response.item.create")
    assert output["item"]["call_id"] == "call_1" and json.loads(output["item"]["output"])["ok"] is True
    assert any("pressed 5" in e.get("content", "") for e in s.of_type("session.instructions.append"))
    # Hung up once the goodbye was heard: past its last reflected end_ms (despite the gap in the
    # middle of the reflections), and soon after.
    assert s.end_reason == "close_requested" and s.hung_up_ms is not None
    assert s.goodbye_end_ms == s.speech_end_ms <= s.hung_up_ms <= s.goodbye_end_ms + 1500
    records = read_records(record_path(tmp_path, s.session_id))
    said = [(r["speaker"], r["text"]) for r in records if r["kind"] == "transcript"]
    assert ("caller", "I am done, thank you.") in said
    assert ("agent", "Hello, how can I help?") in said
    assert any(r["kind"] == "dtmf" and r["digits"] == "5" for r in records)
    start = [r for r in records if r["kind"] == "start"][0]
    assert start["route"] == "openai_sip"


async def test_the_hang_up_waits_for_the_session_clock_not_a_gap_in_the_reflections(profile):
    # A 1.2 s gap in the goodbye's reflections (1.0-2.2 s of 3 s): longer than the quiet the hang-up waits for.
    script = LiveScript(goodbye_ms=3000, gap_ms=1200, dtmf="")
    async with LiveSipPeer(script) as peer, running_app(app_settings(peer), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await asyncio.wait_for(s.ended.wait(), 15)
    assert s.hung_up_ms is not None and s.hung_up_ms >= s.speech_end_ms == s.goodbye_end_ms


async def test_session_closed_ends_the_call_with_its_reason(profile, tmp_path):
    async with LiveSipPeer(LiveScript(tool=None, dtmf="", listen_s=0.2)) as peer, \
            running_app(app_settings(peer, call_records_dir=tmp_path), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await asyncio.wait_for(s.ended.wait(), 15)
        await until(lambda: not app.state.calls._calls)
        assert not app.state.calls._calls
    assert s.hung_up_ms is None and s.end_reason == "remote_hangup"
    records = read_records(record_path(tmp_path, s.session_id))
    end = [r for r in records if r["kind"] == "end"][0]
    assert end["reason"] == "session closed: remote_hangup" and end["abnormal"] is False


async def test_the_deprecated_event_name_is_answered_too_and_a_redelivery_once(profile):
    async with LiveSipPeer(LiveScript(tool=None, dtmf="", listen_s=0.2)) as peer, \
            running_app(app_settings(peer), profile) as (app, host):
        url = f"http://{host}/openai/sip"
        s = await peer.ring(url, SIP_HEADERS, kind="live.call.incoming", event_id="wh_1")
        await peer.ring(url, SIP_HEADERS, s.session_id, kind="live.call.incoming", event_id="wh_1")
        await asyncio.wait_for(s.ended.wait(), 15)
    assert s.webhook_statuses == [200, 200] and s.accepts == 1


async def test_one_invite_firing_both_events_is_accepted_through_one_api(profile):
    async with LiveSipPeer(LiveScript(tool=None, dtmf="", listen_s=0.2)) as peer, \
            running_app(app_settings(peer), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        # The same INVITE (same SIP Call-ID) as a Realtime call: acknowledged, nothing else.
        import httpx

        from telephony.offline.openai_sip_peer import sign_webhook
        body = incoming_call_event("rtc_same_invite", SIP_HEADERS)
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/openai/sip", content=body,
                                  headers=sign_webhook(peer.secret, body, "wh_rtc", int(time.time())))
        await asyncio.wait_for(s.ended.wait(), 15)
    assert r.status_code == 200 and s.accepts == 1
    # Nothing was asked of the Realtime calls API (the peer serves only Live: it would have 404'd).
    assert all(verb != "accept" or sid == s.session_id for verb, sid in peer.requests)


async def test_past_the_call_limit_a_live_call_is_rejected_486(profile):
    async with LiveSipPeer(LiveScript(tool=None, dtmf="", listen_s=1.0)) as peer, \
            running_app(app_settings(peer, max_concurrent_calls=1), profile) as (app, host):
        url = f"http://{host}/openai/sip"
        first = await peer.ring(url, SIP_HEADERS)
        other = [dict(h) for h in SIP_HEADERS]
        other[2]["value"] = "another-invite@pc33.example.com"
        second = await peer.ring(url, other)
        await asyncio.wait_for(first.ended.wait(), 15)
    assert first.accepts == 1 and second.rejected == 486 and second.accepts == 0


async def test_the_model_is_realtime_model_when_the_dialect_is_live(profile):
    async with LiveSipPeer(LiveScript(tool=None, dtmf="", listen_s=0.2)) as peer, \
            running_app(app_settings(peer, realtime_dialect="live", realtime_model="gpt-live-1.1",
                                     realtime_api_key="k"), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await asyncio.wait_for(s.ended.wait(), 15)
    assert s.accepted["model"] == "gpt-live-1.1"




async def test_transfer_call_refers_only_once_the_goodbye_was_heard(profile, tmp_path):
    """transfer_call on a Live SIP call: /refer (never /hangup), and only once the session clock has
    passed the last reflected end_ms of the words said before it (a gap in the reflections too)."""
    from dataclasses import replace

    profile = replace(profile, transfer_targets={"desk": "sip:desk@pbx.example.com"})
    script = LiveScript(dtmf="", tool=("transfer_call", '{"destination": "desk"}'), goodbye_ms=2000, gap_ms=800)
    async with LiveSipPeer(script) as peer, \
            running_app(app_settings(peer, call_records_dir=tmp_path), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await asyncio.wait_for(s.ended.wait(), 15)
        await until(lambda: not app.state.calls._calls)
    assert {t["name"] for t in s.accepted["delegation"]["responses"]["tools"]} == {"end_call", "transfer_call"}
    assert s.referred_to == ["sip:desk@pbx.example.com"] and s.hung_up_ms is None
    assert s.speech_end_ms == s.goodbye_end_ms <= s.referred_ms <= s.goodbye_end_ms + 1500
    (output,) = s.of_type("response.item.create")
    assert json.loads(output["item"]["output"])["ok"] is True
    records = read_records(record_path(tmp_path, s.session_id))
    assert any(r["kind"] == "transferred" and r["target"] == "sip:desk@pbx.example.com" for r in records)


async def test_transfer_to_a_target_not_allowed_is_refused_on_a_live_call(profile):
    from dataclasses import replace

    profile = replace(profile, transfer_targets={"desk": "sip:desk@pbx.example.com"})
    script = LiveScript(dtmf="", tool=("transfer_call", '{"destination": "sip:boss@elsewhere.example.com"}'),
                        listen_s=0.5)
    async with LiveSipPeer(script) as peer, running_app(app_settings(peer), profile) as (app, host):
        s = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await asyncio.wait_for(s.ended.wait(), 15)
    assert s.referred_to == [] and s.end_reason == "remote_hangup"
    (output,) = s.of_type("response.item.create")
    assert "cannot transfer" in json.loads(output["item"]["output"])["error"]
