"""Issue 27, settings that failed silently: a whsec_ secret that is not base64, doctor's API key
line for the SIP route, and outbound calls without PUBLIC_URL."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from conftest import running_app
from fake_twilio import ACCOUNT_SID, AUTH_TOKEN, running_fake_twilio

from telephony.settings import Settings, SettingsError

BAD_SECRET = "whsec_abc"  # 'abc' is not base64 (Incorrect padding)


def test_a_whsec_secret_that_is_not_base64_is_refused_at_start_naming_the_variable():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OPENAI_WEBHOOK_SECRET": BAD_SECRET, "TWILIO_VALIDATE_SIGNATURES": "false"})
    assert "OPENAI_WEBHOOK_SECRET" in str(caught.value) and "abc" not in str(caught.value)
    assert Settings.from_env({"OPENAI_WEBHOOK_SECRET": "whsec_" + "QUJD" * 8}).openai_webhook_secret


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "REALTIME_", "API_KEY", "TWILIO_"))}
    return subprocess.run([sys.executable, "-m", "telephony", "doctor"], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_doctor_names_a_bad_webhook_secret():
    done = doctor({"OPENAI_WEBHOOK_SECRET": BAD_SECRET, "TWILIO_VALIDATE_SIGNATURES": "false"})
    assert done.returncode == 2 and "OPENAI_WEBHOOK_SECRET" in done.stderr and BAD_SECRET not in done.stderr


def test_doctor_counts_openai_api_key_for_the_sip_route():
    done = doctor({"OPENAI_API_KEY": "sk-only-openai-key", "OPENAI_WEBHOOK_SECRET": "whsec_" + "QUJD" * 8,
                   "TWILIO_VALIDATE_SIGNATURES": "false"})
    assert "API key:          NOT SET" not in done.stdout, done.stdout
    assert "OPENAI_API_KEY" in done.stdout and "sk-only-openai-key" not in done.stdout


async def test_outbound_calls_without_public_url_are_refused_with_a_reason():
    async with running_fake_twilio() as fake, \
            running_app(Settings(realtime_api_key="sk-x", twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                                 twilio_from_number="+15550001111", twilio_api_base_url=fake.base_url,
                                 calls_api_token="tok-123456")) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/calls", json={"to": "+15552223333"},
                                  headers={"Authorization": "Bearer tok-123456", "Host": "attacker.example"})
    assert r.status_code == 503 and "PUBLIC_URL" in r.text
    assert fake.created == []
