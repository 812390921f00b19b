"""The direct lane's own frame cutting, against a real websockets client over loopback.

An echo app attaches to the lane and sends back each message upper-cased; everything the lane
does not cut itself (fragments, pings, close, bad frames) must behave as websockets would.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import websockets
from websockets.frames import Frame, Opcode

from telephony.direct_lane import DIRECT_LANE

from conftest import serve_app


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


async def test_invalid_utf8_text_is_refused_with_1007(url):
    async with websockets.connect(url, compression=None) as ws:
        ws.transport.write(Frame(Opcode.TEXT, b"\xff\xfe bad").serialize(mask=True, extensions=[]))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
    assert ws.close_code == 1007


async def test_unmasked_client_frame_is_a_protocol_error_1002(url):
    async with websockets.connect(url, compression=None) as ws:
        ws.transport.write(Frame(Opcode.TEXT, b"naked").serialize(mask=False, extensions=[]))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 2)
    assert ws.close_code == 1002


async def test_plain_text_messages_skip_websockets_parser(url, monkeypatch):
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

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
