"""Deployment and operator commands: serve's options, doctor's checks, configure-number."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from helpers import free_port
from twilio.http import HttpClient
from twilio.http.response import Response

from telephony import cli
from telephony.ops.doctor import run_doctor
from telephony.settings import Settings

SID = "AC" + "1" * 32
TOKEN = "twilio-token-secret-555"
NUMBER_SID = "PN" + "2" * 32


class FakeTwilioHttp(HttpClient):
    """Answers the few REST calls we make, and records every request."""

    def __init__(self, numbers: list[str] = ("+15551230000",), status: int = 200) -> None:
        super().__init__(logger=None, is_async=False)
        self.numbers = list(numbers)
        self.status = status
        self.requests: list[dict] = []

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        self.requests.append({"method": method, "uri": uri, "params": params or {}, "data": data or {},
                              "auth": auth})
        if self.status != 200:
            return Response(self.status, json.dumps({"code": 20003, "message": "Authenticate",
                                                     "status": self.status}))
        if uri.endswith(f"/Accounts/{SID}.json"):
            return Response(200, json.dumps({"sid": SID, "friendly_name": "Ops test", "status": "active"}))
        if uri.endswith("/IncomingPhoneNumbers.json") and method == "GET":
            wanted = params.get("PhoneNumber")
            found = [{"sid": NUMBER_SID, "account_sid": SID, "phone_number": n} for n in self.numbers
                     if n == wanted]
            return Response(200, json.dumps({"incoming_phone_numbers": found, "next_page_uri": None,
                                             "page": 0, "page_size": 2, "uri": uri}))
        if uri.endswith(f"/IncomingPhoneNumbers/{NUMBER_SID}.json") and method == "POST":
            return Response(200, json.dumps({"sid": NUMBER_SID, "account_sid": SID, **data}))
        return Response(404, json.dumps({"code": 20404, "message": "not found", "status": 404}))


def env(monkeypatch, **values):
    for key in ("PUBLIC_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_configure_number_sets_voice_url_and_status_callback(monkeypatch, capsys):
    env(monkeypatch, PUBLIC_URL="https://bridge.example.com", TWILIO_ACCOUNT_SID=SID, TWILIO_AUTH_TOKEN=TOKEN)
    http = FakeTwilioHttp()
    args = argparse.Namespace(number="+15551230000", url=None)
    assert cli._configure_number(args, http_client=http) == 0
    lookup, update = http.requests
    assert lookup["method"] == "GET" and lookup["params"]["PhoneNumber"] == "+15551230000"
    assert update["method"] == "POST" and update["uri"].endswith(f"/IncomingPhoneNumbers/{NUMBER_SID}.json")
    assert update["data"] == {"VoiceUrl": "https://bridge.example.com/twilio/voice", "VoiceMethod": "POST",
                              "StatusCallback": "https://bridge.example.com/twilio/status",
                              "StatusCallbackMethod": "POST"}
    assert update["auth"] == (SID, TOKEN)
    out = capsys.readouterr()
    assert "https://bridge.example.com/twilio/voice" in out.out and TOKEN not in out.out + out.err


def test_configure_number_reports_an_unknown_number_and_missing_settings(monkeypatch, capsys):
    env(monkeypatch, PUBLIC_URL="https://bridge.example.com", TWILIO_ACCOUNT_SID=SID, TWILIO_AUTH_TOKEN=TOKEN)
    http = FakeTwilioHttp(numbers=[])
    assert cli._configure_number(argparse.Namespace(number="+15550000000", url=None), http_client=http) == 1
    assert len(http.requests) == 1  # nothing updated
    assert "not a number of this Twilio account" in capsys.readouterr().err
    env(monkeypatch, TWILIO_ACCOUNT_SID=SID, TWILIO_AUTH_TOKEN=TOKEN)
    assert cli._configure_number(argparse.Namespace(number="+15551230000", url=None), http_client=http) == 2
    assert cli._configure_number(argparse.Namespace(number="+15551230000", url="http://localhost:8000"),
                                 http_client=http) == 2
    env(monkeypatch, PUBLIC_URL="https://bridge.example.com")
    assert cli._configure_number(argparse.Namespace(number="+15551230000", url=None), http_client=http) == 1
    assert "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN" in capsys.readouterr().err


async def test_doctor_prints_webhooks_and_checks_the_twilio_account():
    settings = Settings(realtime_api_key="k", public_url="https://bridge.example.com",
                        twilio_account_sid=SID, twilio_auth_token=TOKEN)
    out = io.StringIO()
    http = FakeTwilioHttp()
    assert await run_doctor(settings, connect=False, out=out, twilio_http=http) == 0
    text = out.getvalue()
    assert "Voice webhook:    https://bridge.example.com/twilio/voice" in text
    assert "Media stream:     wss://bridge.example.com/twilio/media-stream" in text
    assert "Status callback:  https://bridge.example.com/twilio/status" in text
    assert f"Twilio account:   OK, {SID}: Ops test (active)" in text
    assert http.requests[0]["uri"].endswith(f"/Accounts/{SID}.json")
    assert TOKEN not in text


async def test_doctor_fails_on_rejected_keys_and_a_bad_public_url():
    out = io.StringIO()
    settings = Settings(realtime_api_key="k", public_url="http://localhost:8000",
                        twilio_account_sid=SID, twilio_auth_token=TOKEN)
    assert await run_doctor(settings, connect=False, out=out, twilio_http=FakeTwilioHttp(status=401)) == 1
    text = out.getvalue()
    assert "Twilio account:   FAILED" in text and "HTTP 401" in text
    assert "PROBLEM: Twilio needs https://" in text and "not reachable from Twilio" in text
    assert TOKEN not in text


async def test_doctor_without_twilio_keys_still_passes():
    out = io.StringIO()
    assert await run_doctor(Settings(twilio_validate_signatures=False,
                                     realtime_api_key="k"), connect=False, out=out) == 0
    assert "Twilio account:   not configured" in out.getvalue()
    out = io.StringIO()
    assert await run_doctor(Settings(twilio_validate_signatures=False,
                                     realtime_api_key="k", twilio_account_sid=SID), connect=False, out=out) == 1
    assert "TWILIO_AUTH_TOKEN is not set" in out.getvalue()


@pytest.mark.parametrize("workers", ["1", "3"])
def test_serve_honours_port_workers_and_proxy_headers(workers):
    """The Procfile's command as Heroku runs it: PORT, WEB_CONCURRENCY, a router in front."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import ROOT

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(port), "WEB_CONCURRENCY": workers,
           "REALTIME_API_KEY": "k", "LOG_LEVEL": "WARNING", "SHUTDOWN_GRACE_SECONDS": "1",
           "TWILIO_VALIDATE_SIGNATURES": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "telephony", "serve"], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/twilio/voice", data=b"CallSid=CA" + b"1" * 32 + b"&From=%2B15551230000",
            headers={"X-Forwarded-Proto": "https", "Host": "my-app.herokuapp.com"})
        twiml = urllib.request.urlopen(request, timeout=5).read().decode()
        assert '<Stream url="wss://my-app.herokuapp.com/twilio/media-stream/s1.' in twiml
        children = subprocess.run(["ps", "--ppid", str(proc.pid), "-o", "pid="], capture_output=True,
                                  text=True).stdout.split()
        # the workers (multiprocessing may add a helper process of its own)
        assert len(children) >= int(workers) if workers != "1" else not children
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_procfile_app_json_and_runtime_pin():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    assert (root / "Procfile").read_text().strip() == "web: telephony serve"
    assert (root / ".python-version").read_text().strip() == "3.13"
    manifest = json.loads((root / "app.json").read_text())
    assert manifest["env"]["REALTIME_API_KEY"]["required"] is True
    assert manifest["env"]["LOG_FORMAT"]["value"] == "json"
    assert manifest["env"]["METRICS_TOKEN"]["generator"] == "secret"
    assert manifest["healthchecks"]["web"][0]["path"] == "/healthz"
    # Every variable app.json offers is one Settings reads and the README documents.
    readme = (root / "README.md").read_text()
    for name in manifest["env"]:
        assert f"| `{name}` |" in readme, name


def test_workers_that_cannot_start_stop_the_service_with_the_reason():
    """WEB_CONCURRENCY=2 with a profile that does not exist: exit 2 and say why, not a restart loop."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": "0", "HOST": "127.0.0.1", "WEB_CONCURRENCY": "2",
           "REALTIME_API_KEY": "k", "AGENT_PROFILE": "/nonexistent/agent.toml",
           "TWILIO_VALIDATE_SIGNATURES": "false"}
    done = subprocess.run([sys.executable, "-m", "telephony", "serve"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "configuration error: agent profile /nonexistent/agent.toml does not exist" in done.stderr
    assert done.stderr.count("configuration error") == 1  # found before any worker started: said once
