"""uvicorn with a graceful stop: on SIGTERM, calls in progress get time to finish.

uvicorn's own shutdown closes every websocket at once (1012), which would cut callers off
mid-sentence. Here the app first drains: the webhook answers busy, calls run on for up to
SHUTDOWN_GRACE_SECONDS, and those still going are ended so Twilio speaks the fallback.
The listening socket stays open meanwhile, so the webhook can still say busy.
"""

from __future__ import annotations

import socket

import uvicorn

from .settings import Settings


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.grace_s = settings.shutdown_grace_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        calls = getattr(getattr(self.config.loaded_app, "state", None), "calls", None)
        if calls is None:  # wrapped by middleware: find the Starlette app underneath
            app = self.config.loaded_app
            while calls is None and hasattr(app, "app"):
                app = app.app
                calls = getattr(getattr(app, "state", None), "calls", None)
        if calls is not None and not self.force_exit:
            await calls.drain(self.grace_s)
        await super().shutdown(sockets)


def ws_max_size(settings: Settings) -> int:
    """uvicorn's hard limit: above it the socket is closed (1009). The bridge's own, lower limit
    drops an oversized message and keeps the call."""
    return max(4 * settings.max_message_bytes, 1 << 20)
