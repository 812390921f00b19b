"""The media stream's fast lane through uvicorn's websocket protocol.

Through plain ASGI every Twilio message costs a queue hop, a task switch and a pause and
resume of reading, and every message sent a coroutine; websockets' generator-based parser
costs ~19 µs a frame more. At ~60 frames in and ~35 out per call per second that was most of
a call's CPU. ``DirectWebSocketProtocol`` is uvicorn's sans-I/O protocol with a ``DirectLane``
in the ASGI scope: once the app attaches a callback, each text message is handed to it as it
is read, and sends are synchronous writes. Handshake, close and disconnect stay on ASGI.

After the handshake, complete single-frame masked text messages (all Twilio sends) are cut
from the byte stream here. Every other frame (control frames, fragments, anything malformed
or oversized) goes to websockets whole, so its parser always starts at a frame boundary and
its checks, close codes and ping replies apply unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import struct
from typing import Callable

import uvicorn
from websockets.frames import apply_mask
from websockets.protocol import State

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # a uvicorn without it: websocket_protocol() says so and picks plain ASGI
    WebSocketsSansIOProtocol = asyncio.Protocol  # type: ignore[misc,assignment]

log = logging.getLogger("telephony.direct_lane")

DIRECT_LANE = "telephony.direct_lane"  # the ASGI scope extension that offers it
# The oldest uvicorn whose sans-I/O websocket protocol this lane runs on (pyproject.toml's floor),
# measured: before 0.35 the module is missing; up to 0.52.0 the protocol lacks the ``disconnected``
# flag and ``writable`` event the lane's sends rely on. 0.52.1 to 0.52.4 differ only in a header.
UVICORN_FLOOR = (0, 52, 1)
SEND_BUFFER_LIMIT = 1 << 20  # bytes unsent to a caller (~50 s of μ-law): past it, drop
PLAIN_ASGI = "websockets-sansio"  # uvicorn's own protocol, without the lane

# What the lane uses of uvicorn's (private) protocol beyond ASGI, and of its websockets connection.
PROTOCOL_METHODS = ("data_received", "handle_connect", "send_receive_event_to_app", "handle_parser_exception")
PROTOCOL_STATE = ("config", "conn", "queue", "transport", "logger", "frames", "curr_msg_data_type",
                  "close_sent", "disconnected", "handshake_initiated", "read_paused", "writable")
CONNECTION_STATE = ("state", "reader", "parser_exc", "send_close")


def lane_problems() -> list[str]:
    """What the lane needs and this uvicorn lacks (empty: the lane can run). A probe protocol is
    built the way uvicorn builds one per connection, so renamed state shows up too, not only methods."""
    base = WebSocketsSansIOProtocol
    if base is asyncio.Protocol:
        return ["uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol"]
    missing = [name for name in PROTOCOL_METHODS if not callable(getattr(base, name, None))]
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(_probe_app, log_config=None, lifespan="off")
        from uvicorn.server import ServerState

        probe = base(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    except Exception as exc:  # its constructor changed
        return missing + [f"its constructor ({type(exc).__name__}: {exc})"]
    finally:
        loop.close()
    missing += [name for name in PROTOCOL_STATE if not hasattr(probe, name)]
    conn = getattr(probe, "conn", None)
    missing += [f"conn.{name}" for name in CONNECTION_STATE if not hasattr(conn, name)]
    if hasattr(conn, "reader") and not hasattr(conn.reader, "buffer"):
        missing.append("conn.reader.buffer")
    return missing


def websocket_protocol() -> type | str:
    """uvicorn's ``ws`` option: the direct lane on a uvicorn it knows; else, with one warning, plain
    ASGI (the bridge's other path: slower per frame, the same calls)."""
    problems = lane_problems()
    if not problems:
        return DirectWebSocketProtocol
    log.warning("uvicorn %s lacks what the direct lane uses (%s): media streams go through plain ASGI",
                uvicorn.__version__, ", ".join(problems))
    return PLAIN_ASGI if WebSocketsSansIOProtocol is not asyncio.Protocol else "auto"


async def _probe_app(scope, receive, send) -> None:  # never called: the probe sees no connection
    raise RuntimeError("probe")


def payload(message: dict) -> str | bytes:
    """The text (or bytes) of an ASGI ``websocket.receive`` message."""
    text = message.get("text")
    return text if text is not None else message.get("bytes") or b""


class DirectLane:
    """What the app sees: ``attach`` a callback for messages, ``send_texts`` synchronously."""

    def __init__(self, protocol: "DirectWebSocketProtocol") -> None:
        self._protocol = protocol

    def attach(self, on_message: Callable[[str | bytes], None]) -> None:
        """From now on messages go to ``on_message``; those already queued go first, in order."""
        protocol = self._protocol
        queue = protocol.queue
        held = []
        while not queue.empty():
            event = queue.get_nowait()
            if event["type"] == "websocket.receive":
                on_message(payload(event))
                # (a handler error here propagates to the caller of attach: the ASGI task)
            else:
                held.append(event)  # disconnect: still for the ASGI reader
        for event in held:
            queue.put_nowait(event)
        # Messages then arrive in the transport's callbacks, outside the task that attached:
        # they run in a copy of its context, so its log ids (a ContextVar) still apply.
        protocol.context = contextvars.copy_context()
        protocol.on_message = on_message
        if protocol.read_paused:
            protocol.read_paused = False
            protocol.transport.resume_reading()

    def send_texts(self, texts: list[str | bytes]) -> bool:
        """Writes them at once, in one write: text frames, and binary frames for bytes (Vonage's
        audio). False: the caller's side is not reading and they were dropped. On a closing
        socket they are dropped too: the ASGI reader sees the disconnect."""
        protocol = self._protocol
        if protocol.close_sent or protocol.disconnected or protocol.transport.is_closing():
            return True
        if not protocol.writable.is_set() and protocol.transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            return False
        if protocol.conn.state is not State.OPEN:
            return True
        frames = []
        for text in texts:
            if isinstance(text, bytes):
                frames.append(_text_header(len(text), BINARY))
                frames.append(text)
            else:
                data = text.encode()
                frames.append(_text_header(len(data)))
                frames.append(data)
        protocol.transport.write(b"".join(frames))
        return True

    def abort(self) -> None:
        """Drops the connection without a close handshake (the peer stopped reading)."""
        self._protocol.transport.abort()


TEXT, BINARY = 0x81, 0x82  # FIN + opcode 1 (text) or 2 (binary)


def _text_header(n: int, first: int = TEXT) -> bytes:
    """A final, unmasked text (or binary) frame's header (RFC 6455 5.2): servers never mask."""
    if n < 126:
        return bytes((first, n))
    if n < 1 << 16:
        return struct.pack("!BBH", first, 126, n)
    return struct.pack("!BBQ", first, 127, n)


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol, offering a ``DirectLane`` in the ASGI scope."""

    on_message: Callable[[str | bytes], None] | None = None
    context: contextvars.Context | None = None
    _pending: bytearray | None = None  # the start of a frame not yet complete
    _need = 0  # bytes that frame takes in all (0: its header is not complete either)
    _fast = True  # False once anything is off the common path: websockets has it from then on

    def data_received(self, data: bytes) -> None:
        # websockets parses the handshake; after it, frames are cut here, from the first byte,
        # so websockets only ever gets whole frames and its parser stays at a frame boundary.
        if self.conn.state is State.CONNECTING:
            if self.handshake_initiated:
                self._fast = False  # frames before our 101: websockets may be inside one already
            return super().data_received(data)
        if not self._fast or self.conn.state is not State.OPEN or self.conn.reader.buffer:
            self._fast = False
            if self._pending:  # a frame begun on the fast path: websockets gets it from its start
                data, self._pending = bytes(self._pending) + data, None
            return super().data_received(data)
        if self._pending:
            self._pending += data  # in place: a large frame in small reads stays linear
            if len(self._pending) < self._need:
                return
            buf, self._pending = self._pending, None
        else:
            buf = data
        end, pos = len(buf), 0
        self._need = 0  # unless a frame's header is complete and its payload is not
        while self._fast and end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length, start = int.from_bytes(buf[pos + 2:pos + 4]), pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2:pos + 10]), pos + 10
            if length > self.config.ws_max_size or not b1 & 0x80:
                self._fast = False  # oversized or unmasked: websockets refuses it (1009, 1002)
                break
            stop = start + 4 + length
            if stop > end:
                self._need = stop - pos  # the rest of the frame is still on its way
                break
            if b0 in (TEXT, BINARY) and not self.frames and not self.close_sent:
                # A whole text (or binary) message: what uvicorn's handle_text/handle_bytes do, minus the parsing.
                self.curr_msg_data_type = "text" if b0 == TEXT else "bytes"
                self.frames = [apply_mask(buf[start + 4:stop], buf[start:start + 4])]
                self.send_receive_event_to_app()
            else:
                # Control frame, fragment, reserved bits: websockets parses it, uvicorn answers.
                super().data_received(bytes(buf[pos:stop]))
                if self.conn.state is not State.OPEN or self.conn.parser_exc is not None:
                    self._fast = False
            pos = stop
        if pos == end:
            return
        if self._fast:
            self._pending = bytearray(buf[pos:])
        elif not self.transport.is_closing():
            super().data_received(bytes(buf[pos:]))

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][DIRECT_LANE] = DirectLane(self)

    def send_receive_event_to_app(self) -> None:
        if self.on_message is None:
            return super().send_receive_event_to_app()
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.logger.warning("Invalid UTF-8 in a websocket text message; closing (1007)")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            self._deliver(text)
        else:
            self._deliver(data)

    def _deliver(self, message: str | bytes) -> None:
        try:
            self.context.run(self.on_message, message)
        except Exception:
            # The handler is broken, not the message: end the stream as a failed ASGI reader would.
            self.logger.exception("error handling a websocket message; ending the stream")
            self.on_message = None
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1011})
