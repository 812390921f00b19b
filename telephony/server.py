"""uvicorn with a graceful stop: on SIGTERM, calls in progress get time to finish.

uvicorn's own shutdown closes every websocket at once (1012), which would cut callers off
mid-sentence. Here the app first drains: the webhook answers busy, calls run on for up to
SHUTDOWN_GRACE_SECONDS, and those still going are ended so Twilio speaks the fallback.
The listening socket stays open meanwhile, so the webhook can still say busy.
"""

from __future__ import annotations

import contextvars
import socket
from typing import Callable

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .limits import CallRegistry
from .settings import Settings


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, calls: CallRegistry, grace_s: float) -> None:
        super().__init__(config)
        self.calls = calls
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.force_exit:  # a second Ctrl-C skips the wait
            await self.calls.drain(self.grace_s)
        await super().shutdown(sockets)


def tcp_socket(host: str, port: int) -> socket.socket:
    """A listening socket that says it is TCP, so asyncio turns Nagle off on what it accepts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def ws_max_size(settings: Settings) -> int:
    """uvicorn's hard limit: above it the socket is closed (1009). The bridge's own, lower limit
    drops an oversized message and keeps the call."""
    return max(4 * settings.max_message_bytes, 1 << 20)


DIRECT_LANE = "telephony.direct_lane"  # the ASGI scope extension that offers it
SEND_BUFFER_LIMIT = 1 << 20  # bytes unsent to a caller (~50 s of μ-law): past it, drop


class DirectLane:
    """The media stream's fast lane through uvicorn's websocket protocol, for the bridge.

    Through plain ASGI every Twilio message costs a queue hop, a task switch and a pause and
    resume of reading, and every message sent a coroutine; at 150 messages a call a second
    that was most of a call's CPU. The lane hands each text message to a callback as it is
    parsed, and sends synchronously. Handshake, close and disconnect stay on ASGI.
    """

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
                on_message(event["text"] if event.get("text") is not None else event.get("bytes") or b"")
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

    def send_texts(self, texts: list[str]) -> bool:
        """Writes them at once, in one write. False: the caller's side is not reading and they were
        dropped. On a closing socket they are dropped too: the ASGI reader sees the disconnect."""
        protocol = self._protocol
        if protocol.close_sent or protocol.disconnected or protocol.transport.is_closing():
            return True
        if not protocol.writable.is_set() and protocol.transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            return False
        conn = protocol.conn
        for text in texts:
            conn.send_text(text.encode())
        protocol.transport.write(b"".join(conn.data_to_send()))
        return True


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websocket protocol, offering a ``DirectLane`` in the ASGI scope."""

    on_message: Callable[[str | bytes], None] | None = None
    context: contextvars.Context | None = None

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
