"""Twilio's webhooks where the audit found untested promises: the outbound answer URL's expiry,
the AMD callback for a call streamed by another instance, and what a status callback keeps."""

from __future__ import annotations

import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
from conftest import running_app
from fake_twilio import AUTH_TOKEN, running_fake_twilio
from helpers import twilio_post
from test_outbound import post_call, settings

from telephony.serve import app as app_module
from telephony.serve.app import OUTBOUND_URL_TTL_S
from telephony.wire.twiml import say_and_hang_up

CALL_SID = "CA" + "7" * 32


async def test_the_outbound_answer_url_works_for_ten_minutes_and_not_after(monkeypatch):
    """Mutation: the answer URL verified at time 0 (so it never expires)."""
    assert OUTBOUND_URL_TTL_S == 600  # the README promises ten minutes of ringing
    async with running_fake_twilio() as fake, running_app(settings(fake)) as (app, host):
        placed_at = time.time()
        assert (await post_call(host, {"to": "+15552223333"})).status_code == 201
        url = urlsplit(fake.created[0]["Url"])

        async def answer_after(seconds: float):
            monkeypatch.setattr(app_module, "time", SimpleNamespace(time=lambda: placed_at + seconds))
            return await twilio_post(host, f"{url.path}?{url.query}", {"CallSid": CALL_SID}, AUTH_TOKEN)

        assert (await answer_after(OUTBOUND_URL_TTL_S - 1)).status_code == 200
        late = await answer_after(OUTBOUND_URL_TTL_S + 2)
    assert late.status_code == 403 and "expired" in late.text


@pytest.mark.parametrize("verdict", ["machine_end_beep", "machine_end_silence", "machine_end_other"])
async def test_a_machine_verdict_for_a_call_on_another_instance_redirects_it_to_the_voicemail(
        profile, verdict):
    async with running_fake_twilio() as fake, running_app(settings(fake)) as (app, host):
        r = await twilio_post(host, "/twilio/amd", {"CallSid": CALL_SID, "AnsweredBy": verdict}, AUTH_TOKEN)
    assert r.status_code == 204
    [(sid, form, _)] = fake.updates
    assert sid == CALL_SID and form == {"Twiml": say_and_hang_up(profile.voicemail)}
    assert profile.voicemail in form["Twiml"] and "<Hangup />" in form["Twiml"]


@pytest.mark.parametrize("verdict", ["human", "fax", "unknown", "machine_start"])
async def test_other_verdicts_for_a_call_on_another_instance_leave_it_alone(verdict):
    async with running_fake_twilio() as fake, running_app(settings(fake)) as (app, host):
        r = await twilio_post(host, "/twilio/amd", {"CallSid": CALL_SID, "AnsweredBy": verdict}, AUTH_TOKEN)
    assert r.status_code == 204 and fake.updates == []


async def test_a_status_callback_keeps_status_answered_by_and_duration(tmp_path):
    from telephony.ops.records import read_records

    async with running_fake_twilio() as fake, \
            running_app(settings(fake).model_copy(update={"call_records_dir": tmp_path})) as (app, host):
        r = await twilio_post(host, "/twilio/status", {"CallSid": CALL_SID, "CallStatus": "completed",
                                                       "AnsweredBy": "human", "CallDuration": "42"}, AUTH_TOKEN)
        assert r.status_code == 204
    [entry] = [e for e in read_records(tmp_path / f"{CALL_SID}.jsonl") if e["kind"] == "twilio_status"]
    assert {k: entry[k] for k in ("status", "answered_by", "duration_s")} == {
        "status": "completed", "answered_by": "human", "duration_s": "42"}
