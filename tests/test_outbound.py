"""Outbound calls and call control against a fake Twilio REST server over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from conftest import running_app
from fake_twilio import ACCOUNT_SID, AUTH_TOKEN, running_fake_twilio
from helpers import (
    simulated_call,
    stream_parameters,
    stream_url,
    twilio_post,
    ulaw_silence,
    ulaw_tone,
    validate_event,
    wait_until,
)

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.settings import Settings

TOKEN = "calls-api-token-xyz"


def settings(fake, realtime_url="ws://127.0.0.1:9/v1/realtime", **kw) -> Settings:
    return Settings(realtime_url=realtime_url, realtime_api_key="sk-x", twilio_account_sid=ACCOUNT_SID,
                    twilio_auth_token=AUTH_TOKEN, twilio_from_number="+15550001111",
                    twilio_api_base_url=fake.base_url, calls_api_token=TOKEN,
                    **{"public_url": "https://bridge.example.com", **kw})  # outbound calls need it


async def post_call(host, body, token=TOKEN):
    async with httpx.AsyncClient() as client:
        return await client.post(f"http://{host}/calls", json=body,
                                 headers={"Authorization": f"Bearer {token}", "Host": "bridge.example.com",
                                          "X-Forwarded-Proto": "https"})


async def test_place_call_carries_signed_overrides_to_the_stream(profile):
    """POST /calls → Twilio is given an answer URL whose signed query carries the overrides;
    when the call is answered that URL gives TwiML whose stream parameters (signed together with
    the new call sid) bring the overrides to the model."""
    async with running_fake_twilio() as fake, ScriptedRealtimeServer(Script(response_ms=300)) as server, \
            running_app(settings(fake, server.url)) as (app, host):
        r = await post_call(host, {"to": "+15552223333", "instructions": "Remind them of the dentist.",
                                   "greeting": "Hi, it's the clinic.", "voice": "coral",
                                   "metadata": {"patient": 42}, "machine_detection": True,
                                   "barge_in": {"min_interruption_ms": 500, "backchannels": ["genau"]}})
        assert r.status_code == 201, r.text
        assert r.json()["call_sid"].startswith("CA") and r.json()["status"] == "queued"
        (form,) = fake.created
        assert form["To"] == "+15552223333" and form["From"] == "+15550001111"
        assert form["StatusCallback"] == "https://bridge.example.com/twilio/status"
        assert form["MachineDetection"] == "DetectMessageEnd" and form["AsyncAmd"] == "true"
        assert form["AsyncAmdStatusCallback"] == "https://bridge.example.com/twilio/amd"
        url = urlsplit(form["Url"])
        assert (url.scheme, url.netloc, url.path) == ("https", "bridge.example.com", "/twilio/outbound")
        query = dict(parse_qsl(url.query))
        assert query["instructions"] == "Remind them of the dentist." and query["token"]
        # Twilio answers the call: it fetches the URL (signed, with the new call sid).
        answer = await twilio_post(host, f"{url.path}?{url.query}", {"CallSid": "CA" + "7" * 32},
                                   AUTH_TOKEN)
        assert answer.status_code == 200
        params = stream_parameters(answer.text)
        assert params["call_sid"] == "CA" + "7" * 32 and params["voice"] == "coral"
        assert json.loads(params["metadata"]) == {"patient": 42}
        assert json.loads(params["barge_in"]) == {"min_interruption_ms": 500, "backchannels": ["genau"]}
        # A forged override is refused, even with Twilio's signature valid for that URL.
        forged = url.query.replace("dentist", "bank+details")
        refused = await twilio_post(host, f"{url.path}?{forged}", {"CallSid": "CA" + "7" * 32}, AUTH_TOKEN)
        assert refused.status_code == 403
        # The stream Twilio opens with those parameters configures the model with the overrides.
        sim = TwilioCallSimulator(stream_url(app, host, "CA" + "7" * 32), call_sid="CA" + "7" * 32,
                                  custom_parameters=params, duration_s=1.0)
        await sim.run()
        # ...and the same parameters, tampered with, are refused before any upstream is opened.
        tampered = TwilioCallSimulator(stream_url(app, host, "CA" + "7" * 32), call_sid="CA" + "7" * 32,
                                       custom_parameters={**params, "voice": "ash"}, duration_s=1.0)
        result = await tampered.run()
    assert result.close_code == 1008
    (conn,) = server.connections
    session = conn.of_type("session.update")[0]["session"]
    assert session["instructions"] == "Remind them of the dentist." and session["voice"] == "coral"
    assert "Hi, it's the clinic." in conn.of_type("response.create")[0]["response"]["instructions"]


@pytest.mark.parametrize("body,token,status,reason", [
    ({"to": "+15552223333"}, "wrong", 401, "bearer"),
    ({"to": "5552223333"}, TOKEN, 422, "E.164"),
    ({"to": "+15552223333", "from": "me"}, TOKEN, 422, "'from'"),
    ({"to": "+15552223333", "colour": "red"}, TOKEN, 422, "unknown fields"),
    ({"to": "+15552223333", "barge_in": {"min_interruption_ms": -1}}, TOKEN, 422, "min_interruption_ms"),
    ({"to": "+15552223333", "barge_in": "off"}, TOKEN, 422, "barge_in"),
    ({"to": "+15552223333", "metadata": {"x": "y" * 600}}, TOKEN, 422, "metadata"),
    # Within each field's limit, but URL escaping (é → %C3%A9) takes the answer URL past 4000.
    ({"to": "+15552223333", "instructions": "é" * 1000}, TOKEN, 422, "4000"),
])
async def test_bad_requests_get_a_4xx_with_a_reason(body, token, status, reason):
    async with running_fake_twilio() as fake, running_app(settings(fake)) as (app, host):
        r = await post_call(host, body, token)
    assert r.status_code == status and reason in r.json()["error"]
    assert fake.created == []


async def test_no_token_configured_disables_the_endpoint():
    async with running_fake_twilio() as fake, \
            running_app(settings(fake).model_copy(update={"calls_api_token": ""})) as (app, host):
        r = await post_call(host, {"to": "+15552223333"})
    assert r.status_code == 503 and "CALLS_API_TOKEN" in r.json()["error"]


@pytest.mark.parametrize("fail,expected", [((400, 21211, "The 'To' number is not valid."), 400),
                                           ((500, 20500, "Internal Server Error"), 502)])
async def test_twilio_errors_become_4xx_or_502_with_twilios_message(fail, expected):
    async with running_fake_twilio() as fake, running_app(settings(fake)) as (app, host):
        fake.fail_with = fail
        r = await post_call(host, {"to": "+15552223333"})
    assert r.status_code == expected
    assert fail[2] in r.json()["error"] and "Traceback" not in r.text and AUTH_TOKEN not in r.text


async def test_twilio_rejecting_our_credentials_is_a_502():
    async with running_fake_twilio() as fake, \
            running_app(settings(fake).model_copy(update={"twilio_auth_token": "wrong"})) as (app, host):
        r = await post_call(host, {"to": "+15552223333"})
    assert r.status_code == 502 and "Authenticate" in r.json()["error"]


def test_cli_call_places_the_same_call(monkeypatch, capsys):
    from telephony.cli import main

    async def scenario():
        async with running_fake_twilio() as fake:
            env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                   "TWILIO_FROM_NUMBER": "+15550001111", "TWILIO_API_BASE_URL": fake.base_url,
                   "PUBLIC_URL": "https://bridge.example.com"}
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            code = await asyncio.to_thread(main, ["call", "+15552223333", "--greeting", "Hello there"])
            return code, fake.created

    code, created = asyncio.run(scenario())
    assert code == 0 and json.loads(capsys.readouterr().out)["call_sid"].startswith("CA")
    assert dict(parse_qsl(urlsplit(created[0]["Url"]).query))["greeting"] == "Hello there"


# --- Tools, end to end: the scripted model calls them, the bridge acts through the fake REST API ---


async def run_call(fake, script, caller, profile=None, seconds=None, extra=None, dialect="beta"):
    async with ScriptedRealtimeServer(script, dialect=dialect) as server, \
            running_app(settings(fake, server.url, realtime_dialect=dialect), profile) as (app, host):
        sim = simulated_call(app, host, caller_audio=caller, duration_s=seconds, extra_messages=extra)
        started = time.monotonic()
        result = await sim.run()
    return server.connections[0], result, sim, started


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_end_call_hangs_up_only_after_the_goodbye_was_heard(dialect):
    # Response 0 greets; the caller answers; response 1 says a 1.5 s goodbye and calls end_call.
    script = Script(response_ms=600, speed=5.0, response_lengths={1: 1500},
                    tool_calls={1: ("end_call", '{"reason": "done"}')})
    caller = ulaw_silence(0.9) + ulaw_tone(500, 0.4)
    async with running_fake_twilio() as fake:
        conn, result, sim, started = await run_call(fake, script, caller, seconds=4.5, dialect=dialect)
    for event in conn.received:
        validate_event(event, dialect, "client")
    (output,) = [e for e in conn.of_type("conversation.item.create")
                 if e["item"]["type"] == "function_call_output"]
    assert json.loads(output["item"]["output"])["ok"] is True
    # The greeting and the answer to the caller's turn (the bridge asks for it: create_response is
    # off); the goodbye was already said in that answer: no extra turn after end_call.
    assert len(conn.of_type("response.create")) == 2
    (sid, form, at) = fake.updates[0]
    assert sid == sim.call_sid and form == {"Status": "completed"}
    goodbye_end = max(e.t for e in result.timeline if e.kind == "agent_audio_stop")
    assert at - started >= goodbye_end - 0.03  # not cut off mid-word
    assert at - started <= goodbye_end + 0.5


async def test_transfer_to_an_allowed_number_dials_it(profile):
    profile = replace(profile, transfer_targets={"sales": "+15557778888"})
    script = Script(response_ms=600, speed=5.0, tool_calls={1: ("transfer_call", '{"destination": "sales"}')})
    async with running_fake_twilio() as fake:
        conn, result, sim, _ = await run_call(fake, script, ulaw_silence(0.9) + ulaw_tone(500, 0.4),
                                              profile, seconds=3.0)
    (sid, form, _) = fake.updates[0]
    assert sid == sim.call_sid
    assert form["Twiml"].endswith("<Response><Dial>+15557778888</Dial></Response>")
    tools = conn.of_type("session.update")[0]["session"]["tools"]
    assert {t["name"] for t in tools} == {"end_call", "transfer_call"}
    assert tools[1]["parameters"]["properties"]["destination"]["enum"] == ["sales"]


async def test_transfer_to_a_number_not_on_the_allow_list_is_refused(profile):
    profile = replace(profile, transfer_targets={"sales": "+15557778888"})
    script = Script(response_ms=600, speed=5.0,
                    tool_calls={1: ("transfer_call", '{"destination": "+19995550000"}')})
    async with running_fake_twilio() as fake:
        conn, result, sim, _ = await run_call(fake, script, ulaw_silence(0.9) + ulaw_tone(500, 0.4),
                                              profile, seconds=3.0)
    assert fake.updates == []
    (output,) = [e for e in conn.of_type("conversation.item.create")
                 if e["item"]["type"] == "function_call_output"]
    assert "cannot transfer" in json.loads(output["item"]["output"])["error"]
    # The greeting, the answer to the caller's turn, then the model is asked to speak again, so it
    # can tell the caller.
    assert len(conn.of_type("response.create")) == 3


async def test_dtmf_burst_reaches_the_model_as_one_message():
    dtmf = [(1.0 + 0.2 * i, json.dumps({"event": "dtmf", "streamSid": "x", "sequenceNumber": "9",
                                        "dtmf": {"track": "inbound_track", "digit": d}}))
            for i, d in enumerate("42#")]
    script = Script(response_ms=300, speed=5.0, respond_to_turns=False)
    async with running_fake_twilio() as fake:
        conn, *_ = await run_call(fake, script, b"", seconds=3.5, extra=dtmf)
    texts = [e["item"]["content"][0]["text"] for e in conn.of_type("conversation.item.create")]
    assert texts == ["The caller pressed 42# on the keypad."]


async def next_event(sim: TwilioCallSimulator, kind: str) -> None:
    while (await sim.events.get()).kind != kind:
        pass


async def test_answering_machine_verdict_leaves_voicemail_then_hangs_up(profile):
    script = Script(response_ms=2000, speed=5.0, respond_to_turns=False)
    async with running_fake_twilio() as fake, ScriptedRealtimeServer(script) as server, \
            running_app(settings(fake, server.url)) as (app, host):
        sim = simulated_call(app, host, caller_audio=b"", duration_s=4.0)
        call_task = asyncio.create_task(sim.run())
        # The verdict comes while the greeting plays (2 s at real time), once it has been generated
        # (0.4 s at speed 5), as the fixed 0.6 s wait here used to arrange.
        await wait_until(lambda: server.connections and any(
            e.get("type") == "response.done" for e in server.connections[0].sent), "the greeting's response.done")
        await asyncio.wait_for(next_event(sim, "agent_audio_start"), 10)
        r = await twilio_post(host, "/twilio/amd", {"CallSid": sim.call_sid, "AnsweredBy": "machine_end_beep"},
                              AUTH_TOKEN)
        assert r.status_code == 204
        result = await call_task
    conn = server.connections[0]
    creates = conn.of_type("response.create")
    assert len(creates) == 2 and profile.voicemail in creates[1]["response"]["instructions"]
    assert len(result.clears) == 1  # the greeting stopped for the beep
    (sid, form, at) = fake.updates[0]
    assert sid == sim.call_sid and form == {"Status": "completed"}


async def test_status_callbacks_are_kept_in_the_call_record(tmp_path):
    from telephony.ops.records import read_records

    async with running_fake_twilio() as fake, \
            running_app(settings(fake).model_copy(update={"call_records_dir": tmp_path})) as (app, host):
        for status in ("ringing", "in-progress", "completed"):
            r = await twilio_post(host, "/twilio/status", {"CallSid": "CA" + "5" * 32, "CallStatus": status},
                                  AUTH_TOKEN)
            assert r.status_code == 204
        forged = await twilio_post(host, "/twilio/status", {"CallSid": "CA" + "5" * 32, "CallStatus": "busy"},
                                   "not-the-token")
        assert forged.status_code == 403
    entries = read_records(tmp_path / ("CA" + "5" * 32 + ".jsonl"))
    assert [e["status"] for e in entries if e["kind"] == "twilio_status"] == ["ringing", "in-progress", "completed"]


async def answered_stream_parameters(host, fake) -> dict[str, str]:
    """Twilio answers the call just placed: the TwiML its answer URL gives, as stream parameters."""
    url = urlsplit(fake.created[-1]["Url"])
    answer = await twilio_post(host, f"{url.path}?{url.query}", {"CallSid": "CA" + "8" * 32}, AUTH_TOKEN)
    assert answer.status_code == 200, answer.text
    return stream_parameters(answer.text)


async def test_an_empty_greeting_places_a_call_whose_agent_waits_for_the_callee():
    async with running_fake_twilio() as fake, ScriptedRealtimeServer(Script(response_ms=300)) as server, \
            running_app(settings(fake, server.url)) as (app, host):
        r = await post_call(host, {"to": "+15552223333", "greeting": ""})
        assert r.status_code == 201, r.text
        params = await answered_stream_parameters(host, fake)
        await TwilioCallSimulator(stream_url(app, host, "CA" + "8" * 32), call_sid="CA" + "8" * 32,
                                  custom_parameters=params, duration_s=1.0).run()
    assert params["silent_start"] == "1" and "greeting" not in params
    (conn,) = server.connections
    for event in conn.received:
        validate_event(event, "beta", "client")
    assert conn.of_type("session.update") and conn.of_type("response.create") == []


async def test_a_call_may_name_its_profile_and_otherwise_gets_the_one_listing_its_from_number(tmp_path):
    from telephony.core.profile_choice import load_profiles

    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "default.toml").write_text('[agent]\ninstructions = "Front desk."\n')
    (folder / "reminders.toml").write_text('numbers = ["+15550001111"]\n[agent]\ninstructions = "Reminders."\n')
    (folder / "surveys.toml").write_text('[agent]\ninstructions = "Surveys."\n')
    async with running_fake_twilio() as fake, ScriptedRealtimeServer(Script(response_ms=300)) as server, \
            running_app(settings(fake, server.url), load_profiles(folder)) as (app, host):
        refused = await post_call(host, {"to": "+15552223333", "profile": "nope"})
        assert refused.status_code == 422 and "default, reminders, surveys" in refused.json()["error"]
        assert (await post_call(host, {"to": "+15552223333", "profile": "surveys"})).status_code == 201
        named = await answered_stream_parameters(host, fake)
        assert (await post_call(host, {"to": "+15552223333"})).status_code == 201  # from +15550001111
        by_from = await answered_stream_parameters(host, fake)
        await TwilioCallSimulator(stream_url(app, host, "CA" + "8" * 32), call_sid="CA" + "8" * 32,
                                  custom_parameters=named, duration_s=0.8).run()
    assert named["profile"] == "surveys" and by_from["profile"] == "reminders"
    assert server.connections[0].of_type("session.update")[0]["session"]["instructions"] == "Surveys."
