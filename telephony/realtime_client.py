"""The Realtime websocket client: a thin transport that moves text to and from the provider."""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import websockets
from websockets.asyncio.client import ClientConnection

from .security import RedactingLogger
from .settings import Settings

log = logging.getLogger("telephony.realtime_client")

CONNECT_TIMEOUT_S = 4.0  # a caller must never sit in silence waiting for a dead upstream
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # session.created carries the whole config; deltas are small
CLOSE_TIMEOUT_S = 0.5  # then the TCP connection is dropped: a closing call must not linger


class RealtimeTransport(Protocol):
    async def send(self, text: str) -> None: ...

    async def recv(self) -> str: ...

    async def close(self) -> None: ...


def realtime_url(settings: Settings, intent: str | None = None) -> str:
    """The provider URL with ``model=`` (or ``intent=transcription``) added to its query."""
    parts = urlsplit(settings.realtime_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("model", "intent")]
    query.append(("intent", intent) if intent else ("model", settings.realtime_model))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def auth_headers(settings: Settings, dialect_headers: dict[str, str]) -> dict[str, str]:
    headers = dict(dialect_headers)
    if settings.realtime_api_key:
        if ".azure.com" in (urlsplit(settings.realtime_url).hostname or ""):
            headers["api-key"] = settings.realtime_api_key
        else:
            headers["Authorization"] = f"Bearer {settings.realtime_api_key}"
    return headers


class WebsocketTransport:
    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn

    async def send(self, text: str) -> None:
        await self._conn.send(text)

    async def recv(self) -> str:
        message = await self._conn.recv()
        return message if isinstance(message, str) else message.decode("utf-8", "replace")

    async def close(self) -> None:
        try:
            await self._conn.close()
        finally:
            # A provider that stopped reading never answers the close frame; if we are cancelled
            # waiting for it, the socket would stay open. Aborting a closed transport is a no-op.
            self._conn.transport.abort()


async def connect(settings: Settings, dialect_headers: dict[str, str],
                  intent: str | None = None) -> RealtimeTransport:
    """Opens the upstream socket. Raises OSError/TimeoutError/websockets errors on failure."""
    conn = await websockets.connect(
        realtime_url(settings, intent),
        additional_headers=auth_headers(settings, dialect_headers),
        open_timeout=CONNECT_TIMEOUT_S,
        max_size=MAX_MESSAGE_BYTES,
        close_timeout=CLOSE_TIMEOUT_S,
        ping_interval=20,
        compression=None,  # audio does not compress; deflate only costs CPU
        user_agent_header="telephony",
        logger=RedactingLogger(log, settings.secrets()),  # its DEBUG logs show the headers we send
    )
    return WebsocketTransport(conn)
