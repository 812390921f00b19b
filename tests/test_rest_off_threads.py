"""Issue 22 item 11: Twilio REST never waits for a thread. Timed-out sync tools used to hold asyncio's
default pool (6 threads on 2 CPUs), and hang-up, transfer, handoff, AMD redirects and outbound
calls queued behind them (a trivial to_thread waited 19 s after 6 timed-out tool calls)."""

from __future__ import annotations

import asyncio
import os
import threading

import httpx
from conftest import running_app
from fake_twilio import ACCOUNT_SID, AUTH_TOKEN, running_fake_twilio
from test_outbound import TOKEN, settings

from telephony.serve.twilio_rest import CallControl, TwilioError
from telephony.settings import Settings

SID = "CA" + "5" * 32


def saturate_default_pool(release: threading.Event) -> list[asyncio.Future]:
    """Every thread of the loop's default executor blocked, and more waiting, as after timed-out tools."""
    loop = asyncio.get_running_loop()
    return [loop.run_in_executor(None, release.wait, 60) for _ in range(4 * ((os.cpu_count() or 1) + 4) + 8)]


async def test_rest_calls_complete_while_every_default_thread_is_blocked():
    release = threading.Event()
    async with running_fake_twilio() as fake, running_app(settings(fake)) as (app, host):
        blocked = saturate_default_pool(release)
        try:
            control = CallControl(settings(fake))
            await asyncio.wait_for(control.hang_up(SID), 5)
            await asyncio.wait_for(control.redirect(SID, "<Response><Hangup/></Response>"), 5)
            async with httpx.AsyncClient() as client:  # POST /calls: outbound placement
                r = await asyncio.wait_for(client.post(f"http://{host}/calls", json={"to": "+15552223333"},
                                                       headers={"Authorization": f"Bearer {TOKEN}"}), 5)
            await control.aclose()
        finally:
            release.set()
            await asyncio.gather(*blocked)
    assert r.status_code == 201, r.text
    assert [(sid, form) for sid, form, _ in fake.updates] == [
        (SID, {"Status": "completed"}), (SID, {"Twiml": "<Response><Hangup/></Response>"})]
    assert fake.created and fake.created[0]["To"] == "+15552223333"


async def test_twilio_unreachable_and_refusals_are_twilio_errors():
    async with running_fake_twilio() as fake:
        fake.fail_with = (404, 20404, "The requested resource was not found")
        control = CallControl(settings(fake))
        try:
            await control.place("+15552223333", "+15550001111", "https://x/a", "https://x/s", None)
        except TwilioError as exc:
            refused = exc
        await control.aclose()
    assert (refused.status, refused.code) == (404, 20404)
    control = CallControl(Settings(twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                                   twilio_api_base_url="http://127.0.0.1:9"))  # nothing listens there
    try:
        await control.hang_up(SID)
    except TwilioError as exc:
        unreachable = exc
    await control.aclose()
    assert unreachable.status == 502 and AUTH_TOKEN not in str(unreachable)
