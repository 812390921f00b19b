"""The Realtime side failing: refused, stalled, erroring, dropped. What the caller gets."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from conftest import running_app
from helpers import simulated_call, ulaw_silence, ulaw_tone, validate_event

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve import realtime_client
from telephony.settings import Settings
from telephony.wire import realtime_beta

API_KEY = "sk-test-secret-key-123"


def settings_for(server: ScriptedRealtimeServer) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key=API_KEY)


async def closed(server: ScriptedRealtimeServer, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(c.closed for c in server.connections) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("status", [401, 503])
async def test_rejected_handshake_ends_the_stream_at_once(status, caplog):
    async with ScriptedRealtimeServer(Script(reject_status=status)) as server, \
            running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(5.0), hang_up=False)
        result = await sim.run()
    assert result.closed_by_bridge_at is not None and result.closed_by_bridge_at < 1.0
    assert f"call {sim.call_sid}: cannot connect to Realtime: HandshakeRejected: HTTP {status}" in caplog.text


async def test_stalled_handshake_times_out_before_the_caller_waits_five_seconds():
    async with ScriptedRealtimeServer(Script(handshake_delay_s=30)) as server, \
            running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(8.0), hang_up=False)
        result = await sim.run()
    # Twilio plays the fallback as soon as the stream closes.
    assert realtime_client.CONNECT_TIMEOUT_S - 0.2 < result.closed_by_bridge_at < 5.0
    assert result.agent.count(b"\xff") == len(result.agent)  # silence until then, nothing else


CALLER = ulaw_silence(0.3) + ulaw_tone(500, 0.5) + ulaw_silence(1.9)  # one turn, then quiet


async def test_dropped_upstream_reconnects_with_config_and_conversation(caplog):
    # ~80 client messages is 1.5 s in: after the greeting, the caller's turn and the reply.
    script = Script(response_ms=600, drop_after=80)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=CALLER, duration_s=len(CALLER) / 8000)
        result = await sim.run()
        await closed(server)
    assert result.closed_by_bridge_at is None  # the caller noticed nothing but a pause
    first, second = server.connections
    assert f"call {sim.call_sid}: Realtime session dropped" in caplog.text
    said = [e for e in first.sent if e["type"] == "response.audio_transcript.done"]
    assert [e["transcript"] for e in said][-1].startswith("Scripted response number 2")

    for event in second.received:
        validate_event(event, "beta", "client")
    types = second.received_types()
    assert types[0] == "session.update"
    assert second.received[0]["session"] == first.received[0]["session"]
    assert "response.create" not in types  # not greeted twice
    items = [e["item"] for e in second.of_type("conversation.item.create")]
    assert [(i["role"], i["content"][0]["type"]) for i in items] == [
        ("assistant", "text"), ("user", "input_text"), ("assistant", "text")]
    greeting, caller, reply = (i["content"][0]["text"] for i in items)
    full_greeting = "Scripted response number 1, a tone of 440 hertz."
    assert greeting and full_greeting.startswith(greeting) and greeting != full_greeting  # cut as heard
    assert caller.startswith("a 500 Hz tone")  # the scripted server transcribes a turn as its pitch
    assert reply.startswith("Scripted response number 2")
    assert types.index("conversation.item.create") < types.index("input_audio_buffer.append")
    # Caller audio kept flowing: what was said during the reconnect was buffered, then sent.
    assert len(first.of_type("input_audio_buffer.append")) + len(second.of_type("input_audio_buffer.append")) \
        >= len(CALLER) // 160 - 2


async def test_upstream_dropping_twice_ends_the_stream_so_the_fallback_speaks(caplog):
    script = Script(response_ms=600, drop_after=40, drop_connections=2)
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(6.0), hang_up=False)
        result = await sim.run()
    assert len(server.connections) == 2
    assert result.closed_by_bridge_at is not None and result.closed_by_bridge_at < 2.5
    assert f"call {sim.call_sid}: Realtime session closed" in caplog.text


async def test_upstream_that_stops_reading_does_not_hold_up_the_caller():
    opened = []

    def recording(settings: Settings):
        async def connect():
            opened.append(await realtime_client.connect(settings, realtime_beta.headers))
            return opened[-1]
        return connect

    async with ScriptedRealtimeServer(Script(stall_after=20)) as server, \
            running_app(settings_for(server), connector_factory=recording) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(1.5), duration_s=1.5)
        started = time.monotonic()
        result = await sim.run()
        elapsed = time.monotonic() - started
        await asyncio.sleep(realtime_client.CLOSE_TIMEOUT_S + 0.2)
        # It never answered our close frame (it reads nothing): the socket was dropped anyway.
        (upstream,) = opened
        assert upstream.is_closing
    assert result.closed_by_bridge_at is None and elapsed < 1.5 + 0.4  # frames out on time, prompt close
    assert app.state.active_calls == set()


class _NotReading:
    """A transport whose provider stopped reading: its send buffer is over the limit."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def send(self, text: str) -> bool:
        return False

    async def recv(self) -> str:
        return await self.inner.recv()

    async def close(self) -> None:
        await self.inner.close()


async def test_stalled_upstream_drops_audio_with_one_warning_not_unbounded_buffering(caplog):
    def stalled(settings: Settings):
        async def connect():
            return _NotReading(await realtime_client.connect(settings, realtime_beta.headers))
        return connect

    async with ScriptedRealtimeServer() as server, \
            running_app(settings_for(server), connector_factory=stalled) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(1.5), duration_s=1.5)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            result = await sim.run()
        elapsed = time.monotonic() - started
        await closed(server)
    assert result.closed_by_bridge_at is None and elapsed < 1.5 + 0.4
    drops = [r.getMessage() for r in caplog.records if "Realtime is not reading" in r.getMessage()]
    assert len(drops) == 1, drops  # rate limited: ~75 drops in 1.5 s, one line
    assert f"call {sim.call_sid}: Realtime is not reading; 1 message(s) dropped" == drops[0]
    assert app.state.active_calls == set()


async def test_transport_drops_rather_than_buffers_for_a_provider_that_stopped_reading(monkeypatch):
    monkeypatch.setattr(realtime_client, "SEND_BUFFER_LIMIT", 256 * 1024)
    async with ScriptedRealtimeServer(Script(stall_after=1)) as server:
        upstream = await realtime_client.connect(settings_for(server), realtime_beta.headers)
        try:
            assert upstream.send('{"type":"session.update","session":{}}')
            await asyncio.sleep(0.2)  # the server has stopped reading
            chunk = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 65536})
            sent = 0
            while sent < 2000 and upstream.send(chunk):  # 2000 × 64 KB: more than any kernel buffers
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0)  # let the loop flush what the kernel will take
            assert 0 < sent < 2000
            buffered = upstream._transport.underlying_transport.get_write_buffer_size()
            assert buffered <= realtime_client.SEND_BUFFER_LIMIT + len(chunk)
        finally:
            await upstream.close()


async def test_realtime_connection_goes_through_the_proxy_the_environment_names(monkeypatch):
    """Operators behind an egress proxy set HTTPS_PROXY (HTTP_PROXY for ws://), as for any tool."""
    tunnels: list[bytes] = []

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def connect_proxy(reader, writer):  # just enough of an HTTP CONNECT proxy
        request = await reader.readuntil(b"\r\n\r\n")
        tunnels.append(request.split(b"\r\n")[0])
        host, port = request.split()[1].decode().rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(connect_proxy, "127.0.0.1", 0)
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
    try:
        async with ScriptedRealtimeServer() as server:
            upstream = await realtime_client.connect(settings_for(server), realtime_beta.headers)
            try:
                assert json.loads(await asyncio.wait_for(upstream.recv(), 2))["type"] == "session.created"
            finally:
                await upstream.close()
            port = server.url.split(":")[2].split("/")[0]
    finally:
        proxy.close()
    assert tunnels == [f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode()]


async def test_wss_with_the_default_tls_context_carries_large_and_many_messages(monkeypatch):
    """Providers are wss://: the system's trust store (here SSL_CERT_FILE naming a test CA)."""
    import ssl
    from pathlib import Path

    import websockets

    data = Path(__file__).parent / "data"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(data / "localhost-cert.pem", data / "localhost-key.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(data / "localhost-cert.pem"))

    async def echo(ws):
        await ws.send('{"type":"session.created","session":{}}')
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", 0, ssl=context) as server:
        port = server.sockets[0].getsockname()[1]
        settings = Settings(twilio_validate_signatures=False,
                            realtime_url=f"wss://localhost:{port}/v1/realtime", realtime_api_key=API_KEY)
        upstream = await realtime_client.connect(settings, realtime_beta.headers)
        try:
            assert json.loads(await upstream.recv())["type"] == "session.created"
            big = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 200_000})
            for i in range(100):
                assert upstream.send(json.dumps({"type": "n", "i": i}))
            assert upstream.send(big)
            echoed = [await asyncio.wait_for(upstream.recv(), 2) for _ in range(101)]
        finally:
            await upstream.close()
    assert [json.loads(m)["i"] for m in echoed[:100]] == list(range(100)) and echoed[100] == big


async def test_attached_consumer_gets_messages_in_order_and_its_failure_ends_the_socket():
    async with ScriptedRealtimeServer() as server:
        upstream = await realtime_client.connect(settings_for(server), realtime_beta.headers)
        seen = []

        def consume(text: str) -> None:
            seen.append(json.loads(text)["type"])
            if len(seen) == 2:
                raise RuntimeError("bug in the handler")

        try:
            upstream.send(json.dumps({"type": "session.update", "session": {}}))
            with pytest.raises(RuntimeError, match="bug in the handler"):
                await asyncio.wait_for(upstream.attach(consume), 2)
            assert seen == ["session.created", "session.updated"]
            await asyncio.sleep(0.1)
            assert upstream.is_closing  # a consumer that failed closes the socket, not just itself
        finally:
            await upstream.close()


# --- A provider that retired the protocol we speak ---


async def test_a_retired_beta_shape_ends_the_stream_at_once_with_the_fix_and_no_reconnect(caplog):
    # As api.openai.com answers since May 2026: error beta_api_shape_disabled, then close 4000.
    async with ScriptedRealtimeServer(Script(beta_retired=True)) as server, \
            running_app(settings_for(server)) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(5.0), hang_up=False)
        result = await sim.run()
        await closed(server)
    assert len(server.connections) == 1  # a 4000 is final: no second try
    assert result.closed_by_bridge_at is not None and result.closed_by_bridge_at < 1.0  # the fallback at once
    # One error line says what to change (the stream's INFO line "ending stream: <reason>" may
    # repeat the reason, depending on which side closes first).
    fixes = [r for r in caplog.records if "REALTIME_DIALECT=ga" in r.getMessage() and r.levelno >= logging.WARNING]
    assert len(fixes) == 1 and fixes[0].levelno == logging.ERROR
    assert f"call {sim.call_sid}: " in fixes[0].getMessage() and "beta_api_shape_disabled" in fixes[0].getMessage()
    assert "reconnecting" not in caplog.text
    assert "no longer supported" not in caplog.text  # the provider's message is replaced by what to do

