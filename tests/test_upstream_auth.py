"""How the key reaches the Realtime provider: Azure's ``api-key`` header for *.azure.com, a
Bearer token elsewhere, and never to a host a redirect names. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from telephony.offline.scripted_realtime import ScriptedRealtimeServer
from telephony.serve import realtime_client
from telephony.serve.realtime_client import HandshakeRejected
from telephony.settings import Settings
from telephony.wire import realtime_beta

API_KEY = "sk-upstream-auth-secret"


@contextlib.asynccontextmanager
async def connect_proxy_to(port: int, monkeypatch):
    """An HTTP CONNECT proxy (named by HTTP_PROXY) that tunnels every host to 127.0.0.1:port, so
    a provider's real host name can be used in the URL."""
    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def tunnel(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(tunnel, "127.0.0.1", 0)
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
    try:
        yield
    finally:
        proxy.close()


async def handshake_headers(url_host: str, monkeypatch) -> dict[str, str]:
    async with ScriptedRealtimeServer() as server:
        port = int(server.url.split(":")[2].split("/")[0])
        settings = Settings(twilio_validate_signatures=False,
                            realtime_url=f"ws://{url_host}:{port}/openai/realtime", realtime_api_key=API_KEY)
        async with connect_proxy_to(port, monkeypatch):
            upstream = await realtime_client.connect(settings, realtime_beta.headers)
            try:
                assert json.loads(await asyncio.wait_for(upstream.recv(), 2))["type"] == "session.created"
            finally:
                await upstream.close()
        return server.connections[0].headers


async def test_azure_gets_the_key_in_its_api_key_header(monkeypatch):
    headers = await handshake_headers("my-resource.openai.azure.com", monkeypatch)
    assert headers["api-key"] == API_KEY and "authorization" not in headers


async def test_other_providers_get_a_bearer_token(monkeypatch):
    headers = await handshake_headers("realtime.example.com", monkeypatch)
    assert headers["authorization"] == f"Bearer {API_KEY}" and "api-key" not in headers


async def test_a_redirect_is_not_followed_so_the_key_stays_with_the_provider():
    async with ScriptedRealtimeServer() as elsewhere:
        async def redirect(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: {elsewhere.url}\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            writer.close()

        provider = await asyncio.start_server(redirect, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{provider.sockets[0].getsockname()[1]}/v1/realtime"
        try:
            with pytest.raises(HandshakeRejected, match="302"):
                await realtime_client.connect(Settings(twilio_validate_signatures=False,
                                                       realtime_url=url, realtime_api_key=API_KEY),
                                              realtime_beta.headers)
        finally:
            provider.close()
    assert elsewhere.connections == []
