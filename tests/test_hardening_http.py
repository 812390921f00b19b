"""Issue 18, HTTP: webhook bodies, slow or silent connections, the URL signatures are checked
against, multipart bodies, call sids and the calls API. Real uvicorn on loopback, configured as
`telephony serve` configures it (``uvicorn_options``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time

import httpx
import pytest
import uvicorn
from conftest import ROOT, running_app
from twilio.request_validator import RequestValidator

from telephony.core.profile import load_profile
from telephony.offline.scripted_realtime import ScriptedRealtimeServer
from telephony.ops.doctor import run_doctor
from telephony.serve.app import create_app
from telephony.serve.security import WEBHOOK_BODY_LIMIT
from telephony.serve.server import uvicorn_options
from telephony.settings import Settings

API_KEY = "sk-test-secret-key-123"
AUTH_TOKEN = "twilio-auth-token-0123456789abcdef"
CALLS_TOKEN = "calls-api-token-0123456789"
PUBLIC = "https://bridge.example.com"
SID = "CA" + "3" * 32
FORM = {"CallSid": SID, "From": "+15551230000", "To": "+15559870000"}


def settings_for(server: ScriptedRealtimeServer, **overrides) -> Settings:
    return Settings(realtime_url=server.url, realtime_api_key=API_KEY, twilio_auth_token=AUTH_TOKEN,
                    stream_secret="s" * 32, calls_api_token=CALLS_TOKEN, **overrides)


@contextlib.asynccontextmanager
async def served(settings: Settings):
    """The app under uvicorn with the options `telephony serve` uses; yields (app, "127.0.0.1:PORT")."""
    app = create_app(settings, load_profile(ROOT / "config" / "agent.toml"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", **uvicorn_options(settings)))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield app, f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def signature(url: str, form: dict[str, str]) -> str:
    return RequestValidator(AUTH_TOKEN).compute_signature(url, form)


async def raw_exchange(host: str, request: bytes, read_for_s: float = 3.0) -> tuple[bytes, float]:
    """Writes ``request`` on a fresh connection; returns what came back until EOF and how long it took."""
    address, port = host.split(":")
    reader, writer = await asyncio.open_connection(address, int(port))
    started = time.monotonic()
    writer.write(request)
    try:
        answer = await asyncio.wait_for(reader.read(), read_for_s)
    except asyncio.TimeoutError:
        answer = b"<still open>"
    took = time.monotonic() - started
    writer.close()
    return answer, took


# --- 2. Webhook bodies are capped before they are read ---


async def test_an_oversized_webhook_body_gets_413_without_being_read():
    async with ScriptedRealtimeServer() as server, served(settings_for(server)) as (app, host):
        # Announces 1 GB, sends 1 KB: the answer comes at once, from the header alone.
        head = (f"POST /twilio/voice HTTP/1.1\r\nHost: bridge.example.com\r\nX-Twilio-Signature: AAAA\r\n"
                f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {10 ** 9}\r\n\r\n").encode()
        answer, took = await raw_exchange(host, head + b"a=" + b"b" * 1000, read_for_s=2.0)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert took < 1.0


async def test_a_chunked_webhook_body_is_cut_off_at_the_limit():
    chunk = b"a=" + b"b" * 16_000
    async with ScriptedRealtimeServer() as server, served(settings_for(server)) as (app, host):
        address, port = host.split(":")
        reader, writer = await asyncio.open_connection(address, int(port))
        writer.write(b"POST /twilio/voice HTTP/1.1\r\nHost: bridge.example.com\r\nX-Twilio-Signature: AAAA\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(WEBHOOK_BODY_LIMIT // len(chunk) + 4):  # past the limit, no end in sight
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 2.0)
        writer.close()
    assert status.startswith(b"HTTP/1.1 413"), status


# --- 5. Connections that never complete a request ---


@pytest.mark.parametrize("sent", [b"", b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n",
                                  b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"])
async def test_a_connection_without_a_complete_request_is_closed(sent):
    async with ScriptedRealtimeServer() as server, \
            served(settings_for(server, http_request_timeout_seconds=0.5)) as (app, host):
        answer, took = await raw_exchange(host, sent, read_for_s=3.0)
    assert answer != b"<still open>"
    assert 0.4 < took < 2.0


async def test_a_slow_but_complete_exchange_and_keep_alive_still_work():
    async with ScriptedRealtimeServer() as server, \
            served(settings_for(server, http_request_timeout_seconds=0.5)) as (app, host):
        async with httpx.AsyncClient() as client:
            first = await client.get(f"http://{host}/healthz")
            await asyncio.sleep(0.7)  # longer than the request deadline, between two requests
            second = await client.get(f"http://{host}/healthz")
    assert first.status_code == second.status_code == 200


# --- 6. The URL signatures are checked against ---


async def test_with_public_url_set_the_request_host_is_never_trusted():
    async with ScriptedRealtimeServer() as server, served(settings_for(server, public_url=PUBLIC)) as (app, host):
        async with httpx.AsyncClient() as client:
            evil = await client.post(f"http://{host}/twilio/voice", data=FORM, headers={
                "Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
                "X-Twilio-Signature": signature("https://evil.example/twilio/voice", FORM)})
            good = await client.post(f"http://{host}/twilio/voice", data=FORM, headers={
                "Host": "evil.example", "X-Twilio-Signature": signature(PUBLIC + "/twilio/voice", FORM)})
    assert evil.status_code == 403
    assert good.status_code == 200 and 'url="wss://bridge.example.com/twilio/media-stream/' in good.text


async def test_without_public_url_x_forwarded_host_is_not_trusted_and_a_warning_is_logged(caplog):
    async with ScriptedRealtimeServer() as server, served(settings_for(server)) as (app, host):
        async with httpx.AsyncClient() as client:
            forged = await client.post(f"http://{host}/twilio/voice", data=FORM, headers={
                "Host": "bridge.example.com", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
                "X-Twilio-Signature": signature("https://evil.example/twilio/voice", FORM)})
            honest = await client.post(f"http://{host}/twilio/voice", data=FORM, headers={
                "Host": "bridge.example.com", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
                "X-Twilio-Signature": signature(PUBLIC + "/twilio/voice", FORM)})
    assert forged.status_code == 403
    assert honest.status_code == 200 and "evil" not in honest.text
    assert "PUBLIC_URL is not set" in caplog.text


async def test_x_forwarded_proto_counts_only_from_forwarded_allow_ips():
    async with ScriptedRealtimeServer() as server, \
            served(settings_for(server, twilio_validate_signatures=False,
                                forwarded_allow_ips="10.9.9.9")) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/twilio/voice", data=FORM, headers={
                "Host": "bridge.example.com", "X-Forwarded-Proto": "https"})
    assert 'url="ws://bridge.example.com/twilio/media-stream/' in r.text  # not wss: 127.0.0.1 is not a proxy


# (Without PUBLIC_URL the calls API refuses outright: tests/test_settings_that_failed_silently.py.)
@pytest.mark.parametrize("public_url, host_header", [(PUBLIC, "evil.example"), (PUBLIC, "bridge.example.com")])
async def test_the_calls_api_hands_twilio_urls_on_public_url_or_host_never_x_forwarded_host(public_url, host_header):
    from fake_twilio import ACCOUNT_SID, running_fake_twilio
    from fake_twilio import AUTH_TOKEN as FAKE_AUTH_TOKEN

    async with running_fake_twilio() as fake, ScriptedRealtimeServer() as server, running_app(Settings(
            realtime_url=server.url, realtime_api_key=API_KEY, twilio_account_sid=ACCOUNT_SID,
            twilio_auth_token=FAKE_AUTH_TOKEN, twilio_from_number="+15550001111", twilio_api_base_url=fake.base_url,
            calls_api_token=CALLS_TOKEN, public_url=public_url)) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/calls", json={"to": "+15552223333", "machine_detection": True},
                                  headers={"Authorization": f"Bearer {CALLS_TOKEN}", "Host": host_header,
                                           "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    assert r.status_code == 201, r.text
    (form,) = fake.created
    urls = [form["Url"], form["StatusCallback"], form["AsyncAmdStatusCallback"]]
    assert all(url.startswith(PUBLIC + "/twilio/") for url in urls), urls


async def test_doctor_flags_an_unset_public_url():
    out = io.StringIO()
    await run_doctor(Settings(twilio_validate_signatures=False, realtime_api_key=API_KEY), connect=False, out=out)
    assert "Public URL:       WARNING: not set" in out.getvalue()


# --- 7. Multipart bodies ---


async def test_a_multipart_body_with_a_file_gets_400_on_every_twilio_route(caplog):
    from starlette.routing import Route

    async with ScriptedRealtimeServer() as server, served(settings_for(server, public_url=PUBLIC)) as (app, host):
        paths = [r.path for r in app.routes if isinstance(r, Route) and r.path.startswith("/twilio/")]
        async with httpx.AsyncClient() as client:
            answers = [await client.post(f"http://{host}{path}", data=FORM, files={"f": ("x.txt", b"hello")},
                                         headers={"X-Twilio-Signature": "AAAA"}) for path in paths]
    assert len(paths) >= 5
    assert [r.status_code for r in answers] == [400] * len(paths)
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]


# --- 11. Call sids on the webhooks ---


@pytest.mark.parametrize("sid", [".", "..", "CA../../x", "CA" + "1" * 33])
async def test_a_webhook_whose_call_sid_is_not_twilios_gets_400_and_writes_nothing(sid, tmp_path):
    form = {**FORM, "CallSid": sid, "CallStatus": "completed"}
    async with ScriptedRealtimeServer() as server, \
            served(settings_for(server, public_url=PUBLIC, call_records_dir=tmp_path)) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/twilio/status", data=form, headers={
                "X-Twilio-Signature": signature(PUBLIC + "/twilio/status", form)})
    assert r.status_code == 400
    assert list(tmp_path.iterdir()) == []


# --- 12. The calls API ---


@pytest.mark.parametrize("body, status", [(b'{"to": "+15551234567\\n"}', 422),
                                          (b"[" * 100_000, 400),
                                          (b'{"to": "+15551234567", "metadata": ' + b'{"a":' * 100_000, 400)])
async def test_calls_api_refuses_a_trailing_newline_and_deep_nesting(body, status):
    async with ScriptedRealtimeServer() as server, \
            running_app(settings_for(server, public_url=PUBLIC, twilio_from_number="+15550001111")) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/calls", content=body,
                                  headers={"Authorization": f"Bearer {CALLS_TOKEN}"})
    assert r.status_code == status, r.text

