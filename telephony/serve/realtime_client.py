"""The Realtime websocket client: a thin transport that moves text to and from the provider.

It is on picows (Cython framing, callbacks instead of a task per message) because the bridge
moves about a hundred Realtime messages per call per second, and the pure-Python client's
per-message cost was most of the bridge's CPU. Sends are synchronous writes: no writer task,
no queue; a provider that stops reading fills the buffer and the bridge drops, not stalls."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from typing import Callable, Protocol
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import picows

from telephony.serve.security import RedactingLogger
from telephony.settings import Settings
from telephony.wire.realtime import Dialect, model_in_query

log = logging.getLogger("telephony.realtime_client")

CONNECT_TIMEOUT_S = 4.0  # a caller must never sit in silence waiting for a dead upstream
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # session.created carries the whole config; deltas are small
CLOSE_TIMEOUT_S = 0.5  # then the TCP connection is dropped: a closing call must not linger
PING_IDLE_S = 20.0  # a silent provider is pinged; no pong within as long again and it is dropped
SEND_BUFFER_LIMIT = 1 << 20  # bytes unsent (~12 s of PCM16 appends): past it, audio is dropped


class RealtimeTransport(Protocol):
    def send(self, text: str) -> bool:
        """Writes at once, without waiting. False: the provider is not reading and the message
        was dropped. On a closed socket the message is dropped too: the reader sees the close."""

    async def recv(self) -> str: ...

    async def close(self) -> None: ...


def realtime_url(settings: Settings, intent: str | None = None, dialect: Dialect | None = None) -> str:
    """The provider URL as the dialect builds it (beta/GA: ``model=`` or ``intent=`` in the query)."""
    build = dialect.url if dialect is not None else model_in_query
    return build(settings.realtime_url, settings.realtime_model, intent)


def auth_headers(settings: Settings, dialect_headers: dict[str, str]) -> dict[str, str]:
    headers = dict(dialect_headers)
    if settings.realtime_api_key:
        if ".azure.com" in (urlsplit(settings.realtime_url).hostname or ""):
            headers["api-key"] = settings.realtime_api_key
        else:
            headers["Authorization"] = f"Bearer {settings.realtime_api_key}"
    return headers


class _Listener(picows.WSListener):
    """Hands the provider's messages on as picows parses them: to the attached consumer at once,
    or into a queue that ``recv`` drains (one wake-up for all the messages of one read)."""

    def __init__(self) -> None:
        self.messages: deque[str] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed: str | None = None  # why, once the socket is gone or closing
        self.close_code: int | None = None  # the provider's close frame's code; None: none came
        self.failed: BaseException | None = None  # what the consumer raised, which closed us
        self.consumer: Callable[[str], None] | None = None
        self.paused = False
        self._fragments: list[bytes] = []

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind == picows.WSMsgType.TEXT and frame.fin and not self._fragments:
            self._push(transport, frame.get_payload_as_utf8_text())
        elif kind in (picows.WSMsgType.TEXT, picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION):
            self._fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                text = b"".join(self._fragments).decode("utf-8", "replace")
                self._fragments.clear()
                self._push(transport, text)
        elif kind == picows.WSMsgType.CLOSE:
            code = frame.get_close_code()
            reason = (frame.get_close_message() or b"").decode("utf-8", "replace")
            if self.closed is None:
                self.close_code = int(code)
            self._end(f"closed by the provider ({int(code)}{': ' + reason if reason else ''})")
            # A close frame without a code reads as 0 (NO_INFO), which is not ours to send back.
            transport.send_close(code if int(code) >= 1000 else picows.WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self._end("connection lost")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def _push(self, transport: picows.WSTransport, text: str) -> None:
        if self.consumer is None:
            self.messages.append(text)
            self._wake()
            return
        try:
            self.consumer(text)
        except Exception as exc:  # a bug in the consumer: it sees it again from attach()
            self.consumer, self.failed = None, exc
            self._end(f"message handler failed: {exc!r}")
            transport.disconnect()

    def _end(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def news(self) -> None:
        """Waits until a message is queued or the socket closes."""
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter


class WebsocketTransport:
    """The provider's socket (picows): sends are synchronous writes, receives are batched."""

    def __init__(self, transport: picows.WSTransport, listener: _Listener) -> None:
        self._transport = transport
        self._listener = listener

    def send(self, text: str) -> bool:
        listener = self._listener
        if listener.closed is not None:
            return True  # dropped: the reader reports the close and the bridge reconnects
        if listener.paused and self._transport.underlying_transport.get_write_buffer_size() > SEND_BUFFER_LIMIT:
            return False
        self._transport.send(picows.WSMsgType.TEXT, text.encode())
        return True

    async def attach(self, on_message: Callable[[str], None]) -> None:
        """Calls ``on_message`` for each message as it is read, in the caller's context (its log
        ids), without a task switch per message; returns never: raises when the socket closes,
        as ``recv`` does (or with what ``on_message`` raised)."""
        listener = self._listener
        while listener.messages:
            on_message(listener.messages.popleft())
        context = contextvars.copy_context()
        listener.consumer = lambda text: context.run(on_message, text)
        try:
            while listener.closed is None:
                await listener.news()
        finally:
            listener.consumer = None
        if listener.failed is not None:
            raise listener.failed
        raise ConnectionError(listener.closed)

    async def recv(self) -> str:
        listener = self._listener
        while not listener.messages:
            if listener.closed is not None:
                raise ConnectionError(listener.closed)
            await listener.news()
        return listener.messages.popleft()

    async def close(self) -> None:
        try:
            if self._listener.closed is None:
                self._listener.closed = "closed by us"
                self._transport.send_close(picows.WSCloseCode.OK)
                await asyncio.wait_for(self._transport.wait_disconnected(), CLOSE_TIMEOUT_S)
        except (asyncio.TimeoutError, picows.WSError, OSError):
            pass
        finally:
            # A provider that stopped reading never answers the close frame; the socket is
            # dropped rather than left open. Disconnecting a closed transport is a no-op.
            self._transport.disconnect(graceful=False)

    @property
    def close_code(self) -> int | None:
        """The code of the provider's close frame (1000: a normal end), None if it sent none."""
        return self._listener.close_code

    @property
    def is_closing(self) -> bool:
        return self._transport.underlying_transport.is_closing()


async def connect(settings: Settings, dialect_headers: dict[str, str],
                  intent: str | None = None, dialect: Dialect | None = None) -> RealtimeTransport:
    """Opens the upstream socket. Raises OSError, TimeoutError or HandshakeRejected."""
    url = realtime_url(settings, intent, dialect)
    return await connect_to(url, auth_headers(settings, dialect_headers), settings)


async def connect_to(url: str, headers: dict[str, str], settings: Settings) -> RealtimeTransport:
    """Opens a Realtime socket to ``url`` (e.g. a SIP call's sideband) with these headers."""
    headers = dict(headers, **{"User-Agent": "telephony"})
    # The deadline covers TCP, TLS and the upgrade: a blackholed host must not hold the caller.
    try:
        transport, listener = await asyncio.wait_for(_open(url, headers, settings), CONNECT_TIMEOUT_S)
    except picows.WSHandshakeError as exc:
        raise HandshakeRejected(_rejection(exc)) from None
    return WebsocketTransport(transport, listener)


class HandshakeRejected(ConnectionError):
    """The provider answered the upgrade with an HTTP error (bad key, no quota, wrong model)."""


def _rejection(exc: picows.WSHandshakeError) -> str:
    response = exc.response
    status = f"HTTP {int(response.status)}" if response is not None and response.status else "handshake failed"
    body = (exc.raw_body or b"")[:300].decode("utf-8", "replace").strip()
    return f"{status}: {body}" if body else f"{status} ({exc})"


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for this URL (HTTPS_PROXY for wss, HTTP_PROXY for ws,
    NO_PROXY honoured), as the websockets client and most HTTP tools do."""
    parts = urlsplit(url)
    if proxy_bypass(parts.hostname or ""):
        return None
    return getproxies().get("https" if parts.scheme == "wss" else "http")


def _open(url: str, headers: dict[str, str], settings: Settings):
    return picows.ws_connect(
        _Listener, url,
        proxy=proxy_for(url),
        websocket_handshake_timeout=CONNECT_TIMEOUT_S,
        extra_headers=headers,
        max_frame_size=MAX_MESSAGE_BYTES,
        enable_auto_ping=True, auto_ping_idle_timeout=PING_IDLE_S, auto_ping_reply_timeout=PING_IDLE_S,
        max_redirects=0,  # a redirect would carry the API key to another host
        logger_name=_LibraryLogger(log, settings.secrets()),
    )


class _LibraryLogger(RedactingLogger):
    """picows says "connection established" and "disconnected" at INFO for every socket: for
    us that is per call, without the call's id, so it goes to DEBUG."""

    def log(self, level: int, msg: object, *args: object, **kwargs) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)
