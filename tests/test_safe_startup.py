"""Issue 22 items 1, 3, 9, 10 through the real `telephony serve` process: safe by default, one stream
key for every worker, configuration errors stop the service (exit 2), and one Ctrl-C drains."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import free_port, twilio_post, wait_until
from test_shutdown import caller, serving, until_both_workers_carry_calls

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve.app import create_app
from telephony.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "sk-startup-SECRET-key"
AUTH_TOKEN = "startup-SECRET-auth-token"


def service_env(**values: str) -> dict[str, str]:
    """The environment of a service under test: ours, less anything that would change what it checks."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TWILIO_", "STREAM_SECRET", "REDIS_URL", "WEB_CONCURRENCY", "PUBLIC_URL"))}
    return {**env, "PYTHONPATH": str(ROOT), "HOST": "127.0.0.1", "REALTIME_API_KEY": API_KEY, **values}


# --- 1. Unprotected by default ---


def test_the_app_refuses_to_build_without_the_auth_token_unless_told():
    with pytest.raises(SettingsError, match="^TWILIO_AUTH_TOKEN: not set") as refused:
        create_app(Settings(realtime_url="local"))
    assert "TWILIO_VALIDATE_SIGNATURES=false" in str(refused.value)  # says how to develop without one
    create_app(Settings(realtime_url="local", twilio_validate_signatures=False))  # explicitly off: serves
    create_app(Settings(realtime_url="local", twilio_auth_token=AUTH_TOKEN))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_without_the_auth_token_exits_2_naming_it(workers):
    done = subprocess.run([sys.executable, "-m", "telephony", "serve"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=service_env(PORT=str(free_port()), WEB_CONCURRENCY=workers))
    assert done.returncode == 2, done.stderr
    assert "configuration error: TWILIO_AUTH_TOKEN: not set" in done.stderr
    assert done.stderr.count("configuration error") == 1, done.stderr  # said once, no restart loop
    assert API_KEY not in done.stderr


def test_app_json_requires_the_auth_token():
    import json

    manifest = json.loads((ROOT / "app.json").read_text())
    assert manifest["env"]["TWILIO_AUTH_TOKEN"]["required"] is True


# --- 9. A configuration error stops the service, with any number of workers ---


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_malformed_redis_url_stops_the_service_naming_it(workers):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "telephony", "serve"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=service_env(PORT=str(free_port()), WEB_CONCURRENCY=workers,
                                                      TWILIO_AUTH_TOKEN=AUTH_TOKEN,
                                                      REDIS_URL="redis://user:SECRET-pw@cache.internal:port"))
    assert done.returncode == 2, done.stderr
    assert "configuration error: REDIS_URL: not a URL the redis client accepts" in done.stderr
    assert "SECRET-pw" not in done.stderr and AUTH_TOKEN not in done.stderr
    assert time.monotonic() - started < 30  # no restart loop (it used to start a worker every second)


# --- Calls through the real service ---


async def answer(base: str, call_sid: str, signed: bool) -> str:
    """The voice webhook as Twilio posts it (signed with the auth token, or not: development)."""
    form = {"CallSid": call_sid, "From": "+15551230000", "To": "+15559870000"}
    r = await twilio_post(base.split("://", 1)[1], "/twilio/voice", form, AUTH_TOKEN if signed else None,
                          public_base=base)
    assert r.status_code == 200, r.text
    return r.text


def greeted(result) -> bool:
    return any(m.get("event") == "media" for m in result.received)


# --- 3. Two workers share one stream key ---


async def test_two_workers_without_stream_secret_admit_every_call():
    """Signatures off (development), no STREAM_SECRET: a webhook answered by one worker opens its
    stream on either. Each worker used to draw its own key: 4 of 12 calls were admitted."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with ScriptedRealtimeServer(Script(respond_to_turns=False, response_ms=200)) as upstream:
        env = service_env(REALTIME_URL=upstream.url, PORT=str(port), WEB_CONCURRENCY="2",
                          TWILIO_VALIDATE_SIGNATURES="false", PUBLIC_URL=base, LOG_LEVEL="WARNING")
        proc = subprocess.Popen([sys.executable, "-m", "telephony", "serve"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            fresh = httpx.Limits(max_keepalive_connections=0)  # each request may reach either worker
            async with httpx.AsyncClient(limits=fresh) as client:
                await wait_until(lambda: serving(client, base), "the server to start", timeout=30)
                # Calls one after another, each kept open, until both workers carry streams (the
                # kernel picks the worker for the webhook and for the stream, independently).
                async def place(n: int):
                    sid = f"CA{0x3000 + n:032x}"
                    return caller(base, sid, await answer(base, sid, signed=False), 6.0)

                calls, per_worker = await until_both_workers_carry_calls(proc.pid, port, place, limit=12)
                results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=30)[0]
    assert sum(1 for n in per_worker.values() if n) == 2, per_worker  # else the test proves nothing
    refused = [r for r in results if isinstance(r, BaseException) or not greeted(r)]
    assert not refused, (refused, output)


# --- 10. One Ctrl-C drains, a second cuts it short ---


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_one_ctrl_c_drains_and_a_second_cuts_it_short(workers):
    """A terminal's Ctrl-C sends SIGINT to the whole process group: supervisor and workers alike.
    The supervisor used to forward it again, and uvicorn took that second SIGINT as force exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with ScriptedRealtimeServer(Script(respond_to_turns=False, response_ms=200)) as upstream:
        env = service_env(REALTIME_URL=upstream.url, PORT=str(port), WEB_CONCURRENCY=workers,
                          TWILIO_AUTH_TOKEN=AUTH_TOKEN, PUBLIC_URL=base, SHUTDOWN_GRACE_SECONDS="30",
                          LOG_LEVEL="INFO")
        proc = subprocess.Popen([sys.executable, "-m", "telephony", "serve"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its own process group, as under a terminal
        calls: list[asyncio.Task] = []
        try:
            fresh = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(limits=fresh) as client:
                await wait_until(lambda: serving(client, base), "the server to start", timeout=30)
                sims = []
                for i in range(4):
                    sid = f"CA{0x4000 + i:032x}"
                    sims.append(caller(base, sid, await answer(base, sid, signed=True), 20.0))
                calls = [asyncio.create_task(sim.run()) for sim in sims]
                await wait_until(lambda: all(sim._received for sim in sims), "every call to be served", timeout=15)
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
                await asyncio.sleep(2.0)  # well past uvicorn's force exit, had it been taken
                cut = [task for task in calls if task.done()]
                assert not cut, "the first Ctrl-C cut calls instead of draining them"
                assert proc.poll() is None
                second_at = time.monotonic()
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C again: cut it short
                await wait_until(lambda: proc.poll() is not None, "the service to exit", timeout=15)
                exited_after = time.monotonic() - second_at
                results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 15)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate(timeout=30)[0]
            for task in calls:
                task.cancel()
    assert exited_after < 10, output  # the 30 s grace was cut short
    assert all(isinstance(r, BaseException) or r.closed_by_bridge_at is not None for r in results)
    assert API_KEY not in output and AUTH_TOKEN not in output
