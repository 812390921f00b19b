"""uvicorn with a graceful stop: on SIGTERM, calls in progress get time to finish.

uvicorn's own shutdown closes every websocket at once (1012), which would cut callers off
mid-sentence. Here the app first drains: the webhook answers busy, calls run on for up to
SHUTDOWN_GRACE_SECONDS, and those still going are ended so Twilio speaks the fallback.
The listening socket stays open meanwhile, so the webhook can still say busy.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from telephony.serve.limits import CallRegistry
from telephony.settings import Settings

log = logging.getLogger("telephony.server")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, calls: CallRegistry, grace_s: float) -> None:
        super().__init__(config)
        self.calls = calls
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # A second Ctrl-C (uvicorn's force_exit), before or during the drain, cuts it short.
        await self.calls.drain(0.0 if self.force_exit else self.grace_s, hurry=lambda: self.force_exit)
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


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection whose request is not complete in time.

    uvicorn waits forever for a connection that sends nothing, or half its headers, or a slow
    body: each would hold a descriptor for good. Here a connection gets ``request_timeout_s`` from
    its start, or from a request's first byte, to deliver the whole request (a websocket
    upgrade: its headers)."""

    request_timeout_s = 5.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            self._disarm()  # a websocket: its protocol takes over, with its own timeouts
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("connection from %s closed: no complete request within %g s",
                     self.client[0] if self.client else "?", self.request_timeout_s)
            self.transport.close()


def http_protocol(settings: Settings) -> type[DeadlineHttpProtocol]:
    """The HTTP protocol class for uvicorn's ``http=``, set to HTTP_REQUEST_TIMEOUT_SECONDS. (A class
    uvicorn can import by name: its worker processes receive the config pickled.)"""
    DeadlineHttpProtocol.request_timeout_s = settings.http_request_timeout_seconds
    return DeadlineHttpProtocol


def uvicorn_options(settings: Settings) -> dict:
    """What every server of ours passes uvicorn: our HTTP and websocket protocols and limits, and
    the proxies whose X-Forwarded-For/-Proto are believed."""
    from telephony.serve.direct_lane import websocket_protocol

    return dict(proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips,
                http=http_protocol(settings), ws=websocket_protocol(), ws_max_size=ws_max_size(settings))
