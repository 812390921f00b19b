"""uvicorn with a graceful stop: on SIGTERM, calls in progress get time to finish.

uvicorn's own shutdown closes every websocket at once (1012), which would cut callers off
mid-sentence. Here the app first drains: the webhook answers busy, calls run on for up to
SHUTDOWN_GRACE_SECONDS, and those still going are ended so Twilio speaks the fallback.
The listening socket stays open meanwhile, so the webhook can still say busy.
"""

from __future__ import annotations

import socket

import uvicorn

from telephony.serve.limits import CallRegistry
from telephony.settings import Settings


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
