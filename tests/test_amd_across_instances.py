"""Issue 22 item 14: Twilio's AMD verdict may reach a worker or dyno other than the one carrying the
call's stream. It used to get the default profile's voicemail there (the call's own was only in the
other process), and a Twilio error on the redirect (the call over already) was a 500."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis

from conftest import running_app
from fake_twilio import ACCOUNT_SID, AUTH_TOKEN, running_fake_twilio
from helpers import simulated_call, twilio_post, ulaw_silence, wait_until

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.settings import Settings

VOICEMAIL = "This is Acme: please call us back about your order."


async def test_a_verdict_on_another_instance_leaves_the_calls_own_voicemail(redis_server, profile):
    async with ScriptedRealtimeServer(Script(respond_to_turns=False, response_ms=300)) as upstream, \
            running_fake_twilio() as twilio:
        settings = Settings(realtime_url=upstream.url, realtime_api_key="k", stream_secret="shared-stream-secret",
                            redis_url=redis_server.url, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                            twilio_api_base_url=twilio.base_url, public_url="https://bridge.example.com")
        async with running_app(settings) as (a, host_a), running_app(settings) as (b, host_b):
            sim = simulated_call(a, host_a, caller_audio=ulaw_silence(6), duration_s=6,
                                 parameters={"direction": "outbound-api", "to": "+15550002222",
                                             "voicemail": VOICEMAIL})
            call = asyncio.create_task(sim.run())
            saved = redis.from_url(redis_server.url)
            await wait_until(lambda: saved.exists(f"telephony:value:voicemail:{sim.call_sid}"),
                             "the call's voicemail saved where every instance sees it")
            await saved.aclose()
            r = await twilio_post(host_b, "/twilio/amd", {"CallSid": sim.call_sid, "AnsweredBy": "machine_end_beep"},
                                  AUTH_TOKEN, public_base="https://bridge.example.com")
            assert r.status_code == 204, r.text
            # Twilio refuses the next redirect (the call is over): still a 2xx, logged.
            twilio.fail_with = (400, 21220, "Call is not in-progress. Cannot redirect.")
            late = await twilio_post(host_b, "/twilio/amd", {"CallSid": "CA" + "8" * 32,
                                                              "AnsweredBy": "machine_end_silence"},
                                     AUTH_TOKEN, public_base="https://bridge.example.com")
            call.cancel()
    ((sid, form, _), *_) = twilio.updates
    assert sid == sim.call_sid and VOICEMAIL in form["Twiml"], form
    assert profile.voicemail not in form["Twiml"]
    assert late.status_code == 204, late.text
