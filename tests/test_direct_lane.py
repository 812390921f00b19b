"""The direct lane's own frame cutting, against a real websockets client over loopback.

An echo app attaches to the lane and sends back each message upper-cased; everything the lane
does not cut itself (fragments, pings, close, bad frames) must behave as websockets would.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import websockets
from conftest import serve_app
from websockets.frames import Frame, Opcode

from telephony.serve.direct_lane import DIRECT_LANE


async def echo_app(scope, receive, send):
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    lane = scope["extensions"][DIRECT_LANE]
    lane.attach(lambda message: lane.send_texts([message.upper() if isinstance(message, str) else "BYTES"]))
    while (await receive())["type"] != "websocket.disconnect":
        pass


@pytest.fixture
async def url():
    async with serve_app(echo_app, max_ws_message=64 * 1024) as host:
        yield f"ws://{host}/"


async def test_sizes_across_all_three_length_encodings_round_trip(url):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        for n in (0, 1, 125, 126, 200, 65535, 65536 - 14):  # 7-bit, 16-bit lengths; ≤ the limit
            text = "a" * n
            await ws.send(text)
            assert await ws.recv() == text.upper()


async def test_a_burst_of_messages_in_few_segments_arrives_whole_and_in_order(url):
    async with websockets.connect(url, compression=None) as ws:
        messages = [f"m{i}-" + "x" * (i % 300) for i in range(300)]
        for m in messages:
            await ws.send(m)
        assert [await ws.recv() for _ in messages] == [m.upper() for m in messages]


async def test_a_frame_dribbled_a_byte_at_a_time_is_still_one_message(url):
    async with websockets.connect(url, compression=None) as ws:
        raw = Frame(Opcode.TEXT, "dribble é".encode()).serialize(mask=True, extensions=[])
        raw += Frame(Opcode.TEXT, b"next").serialize(mask=True, extensions=[])
        for i in range(len(raw)):
            ws.transport.write(raw[i:i + 1])
            await asyncio.sleep(0.001)
        assert await ws.recv() == "DRIBBLE É"
        assert await ws.recv() == "NEXT"


async def test_fragmented_message_ping_and_close_go_through_websockets(url):
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(["frag", "men", "ted"])  # three frames: TEXT, CONT, CONT
        assert await ws.recv() == "FRAGMENTED"
        latency = await asyncio.wait_for(await ws.ping(), 2)  # answered with a pong
        assert latency >= 0
        await ws.send("still fast after the slow path")
        assert await ws.recv() == "STILL FAST AFTER THE SLOW PATH"
        await ws.close()
    assert ws.close_code == 1000


async def test_binary_message_is_delivered_as_bytes(url):
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(os.urandom(10))
        assert await ws.recv() == "BYTES"


async def test_oversized_message_is_refused_with_1009(url):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send("ok")
        assert await ws.recv() == "OK"
        await ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
    assert ws.close_code == 1009


@pytest.mark.parametrize("payload,masked,code", [(b"\xff\xfe bad", True, 1007),  # invalid UTF-8
                                                  (b"naked", False, 1002)])  # unmasked: protocol error
async def test_bad_text_frame_is_refused_with_its_close_code(url, payload, masked, code):
    async with websockets.connect(url, compression=None) as ws:
        ws.transport.write(Frame(Opcode.TEXT, payload).serialize(mask=masked, extensions=[]))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
    assert ws.close_code == code


async def test_plain_text_messages_skip_websockets_parser(url, monkeypatch):
    from uvicorn.protocols.websockets.websockets_sansio_impl import (
        WebSocketsSansIOProtocol,
    )

    parsed = []
    original = WebSocketsSansIOProtocol.data_received
    monkeypatch.setattr(WebSocketsSansIOProtocol, "data_received",
                        lambda self, data: (parsed.append(bytes(data)), original(self, data))[1])
    async with websockets.connect(url, compression=None) as ws:
        for i in range(100):
            await ws.send(f"message {i}")
            assert await ws.recv() == f"MESSAGE {i}"
        handshake = len(parsed)
        await ws.ping()
    assert handshake == 1 and parsed[0].startswith(b"GET / HTTP/1.1")  # only the upgrade request
    assert len(parsed) >= 2 and parsed[1][0] == 0x89  # the ping: a whole frame, handed over


async def test_a_caller_side_that_stops_reading_is_dropped_not_waited_for_forever():
    """Twilio's side stalls (it reads nothing; its receive window stays full): the agent's audio
    piles up, the lane drops past its limit, and when the call ends the close frame cannot go
    out. The bridge must give up on the close handshake and drop the connection, or the call
    never ends."""
    import base64
    import json
    import socket
    import time
    import uuid
    from urllib.parse import urlsplit

    from conftest import running_app
    from helpers import stream_url

    from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
    from telephony.settings import Settings

    def frame(message: dict) -> bytes:
        return Frame(Opcode.TEXT, json.dumps(message).encode()).serialize(mask=True, extensions=[])

    script = Script(response_ms=120_000, speed=50.0)  # two minutes of agent audio, 50x real time
    async with ScriptedRealtimeServer(script) as server:
        settings = Settings(twilio_validate_signatures=False,
                            realtime_url=server.url, realtime_api_key="k", audio_codec="g711_ulaw")
        async with running_app(settings) as (app, host):
            h, p = host.split(":")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, never read
            sock.connect((h, int(p)))
            key = base64.b64encode(os.urandom(16)).decode()
            sid = "CA" + uuid.uuid4().hex
            path = urlsplit(stream_url(app, host, sid)).path
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n".encode())
            sock.setblocking(False)
            response = b""
            while b"\r\n\r\n" not in response:  # the 101, before any frame (as a client must)
                response += await asyncio.get_running_loop().sock_recv(sock, 4096)
            assert response.startswith(b"HTTP/1.1 101")
            params = app.state.stream_tokens.with_token({"call_sid": sid}, time.time())
            send = asyncio.get_running_loop().sock_sendall
            await send(sock, frame({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await send(sock, frame({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
                "accountSid": "AC1", "streamSid": "MZ1", "callSid": sid, "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
            await asyncio.sleep(0.1)
            # The kernel would otherwise queue megabytes for a peer that reads nothing.
            (bridge,) = app.state.calls._calls
            server_side = bridge._lane._protocol.transport.get_extra_info("socket")
            server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await asyncio.sleep(2.0)  # the greeting streams in; none of it is read
            assert bridge._drops.get("Twilio")  # past the lane's limit: dropped, not buffered
            assert app.state.active_calls
            await send(sock, frame({"event": "stop", "sequenceNumber": "2", "streamSid": "MZ1",
                                "stop": {"callSid": sid}}))
            deadline = time.monotonic() + 3.0
            while app.state.active_calls and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            ended = not app.state.active_calls
            sock.close()
    assert ended  # the call ended, though its close frame could not be sent


async def test_a_frame_split_when_the_server_starts_closing_still_reaches_websockets_whole():
    """The app closes while half a frame sits in the lane's buffer: websockets must get that
    frame from its first byte, or it misreads the client's close reply and the socket lingers
    until uvicorn's 10 s close timer."""
    import base64
    import time

    from websockets.frames import Close

    async def closing_app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        bye = asyncio.Event()
        scope["extensions"][DIRECT_LANE].attach(lambda m: bye.set() if m == "bye" else None)
        await bye.wait()
        await send({"type": "websocket.close", "code": 1000})
        while (await receive())["type"] != "websocket.disconnect":
            pass  # returning leaves the TCP close to uvicorn's close handshake (or its 10 s timer)

    def masked(opcode, payload, mask=b"\0\0\0\0"):
        return bytes((0x80 | opcode.value, 0x80 | len(payload))) + mask + payload  # zero mask: as is

    async with serve_app(closing_app) as host:
        h, p = host.split(":")
        reader, writer = await asyncio.open_connection(h, int(p))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        # A binary frame whose payload looks like a frame header, cut after 6 of its 34 bytes.
        second = masked(Opcode.BINARY, b"\x81\xfe\x00\xc8" + b"\x00" * 24)
        writer.write(masked(Opcode.TEXT, b"bye") + second[:6])
        header = await reader.readexactly(2)
        await reader.readexactly(header[1] & 0x7F)
        assert header[0] == 0x88  # the server's close frame
        writer.write(second[6:] + masked(Opcode.CLOSE, Close(1000, "").serialize()))
        started = time.monotonic()
        await asyncio.wait_for(reader.read(), 5)  # until the server drops TCP
        assert time.monotonic() - started < 1.0
        writer.close()


@pytest.mark.parametrize("missing", ["handle_parser_exception", "frames"])
async def test_an_unknown_uvicorn_gets_one_warning_and_calls_still_work_on_plain_asgi(monkeypatch, caplog, missing):
    """A uvicorn that renamed something the lane uses: one warning at start-up, then a whole call
    (audio both ways) on uvicorn's own protocol."""
    import logging

    from conftest import running_app
    from helpers import active_spans, simulated_call, ulaw_silence, ulaw_tone
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
    from telephony.serve import direct_lane
    from telephony.settings import Settings

    assert direct_lane.websocket_protocol() is direct_lane.DirectWebSocketProtocol  # this uvicorn: known
    if missing in vars(WebSocketsSansIOProtocol):  # a method
        monkeypatch.delattr(WebSocketsSansIOProtocol, missing)
    else:  # state its constructor sets: an upgrade that renamed it
        init = WebSocketsSansIOProtocol.__init__

        def renamed(self, *args, **kwargs):
            init(self, *args, **kwargs)
            delattr(self, missing)
        monkeypatch.setattr(WebSocketsSansIOProtocol, "__init__", renamed)
    with caplog.at_level(logging.WARNING, logger="telephony.direct_lane"):
        ws = direct_lane.websocket_protocol()
    warnings = [r for r in caplog.records if r.name == "telephony.direct_lane"]
    assert ws == direct_lane.PLAIN_ASGI
    assert len(warnings) == 1 and missing in warnings[0].getMessage()

    script = Script(response_ms=1500, speed=2.0)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(Settings(twilio_validate_signatures=False,
                                 realtime_url=server.url, realtime_api_key="sk-lane"), ws=ws) as (app, host):
        seen_lanes = []
        sim = simulated_call(app, host, caller_audio=ulaw_silence(1.0) + ulaw_tone(500, 0.5) + ulaw_silence(2.0))
        original = app.state.calls.add
        app.state.calls.add = lambda bridge: (seen_lanes.append(bridge._lane), original(bridge))[1]
        result = await sim.run()
    assert seen_lanes == [None]  # the bridge ran its plain-ASGI path
    assert server.connections[0].of_type("input_audio_buffer.append")  # caller → model
    assert active_spans(result.agent)  # model → caller
