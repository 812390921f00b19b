"""Admission of a media stream: a websocket becomes a call only once its ``start`` is verified.

Until then it is *pending*: it has ``STREAM_START_TIMEOUT_SECONDS`` to send a ``start`` (Twilio
sends one at once; ``connected`` and anything else do not extend the deadline), and at most
``MAX_PENDING_STREAMS`` may wait at a time. A ``start`` is verified here, before anything keyed by
the call sid it names exists (call registry, transcript feed, call record): its sid must have
Twilio's shape, its token must be signed for this route, unused, and no other stream may be
serving that call. A refused stream is closed with 1008 and counted as refused.

Before all that, the socket's URL must carry a signed path segment for this route
(``stream_paths``): a socket without one is refused before it is accepted (HTTP 403) and never
holds a pending slot, so no number of them can keep a real caller out. The pool holds only
sockets on a URL we issued, at most one per call, and the ``start`` must be for that call.
Every refusal is counted by route and reason (``on_refused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable

from starlette.websockets import WebSocket

from telephony.serve.claims import Claims
from telephony.serve.direct_lane import payload
from telephony.serve.security import StreamTokens, VerifiedToken, valid_call_sid
from telephony.serve.stream_paths import PATH_REFUSALS, PathRefusal, check_segment
from telephony.wire import twilio as tw
from telephony.wire.media import TWILIO_MEDIA, MediaWire, UnusedEvent

log = logging.getLogger("telephony.admission")

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
# A stream's claim on its call outlives any call (Twilio's longest is 24 h); released at its end.
STREAM_CLAIM_TTL_S = 24 * 3600.0


# Why a socket with a valid URL was refused (PATH_REFUSALS in stream_paths: why one without was).
CALL_PENDING = "call_pending"  # another socket on this call's URL is already waiting for its start
PENDING_LIMIT = "pending_limit"
NO_START = "no_start"
BAD_START = "bad_start"  # malformed, not Twilio's call sid, a bad token, or for another call than the URL's
TOKEN_REUSED = "token_reused"
CALL_STREAMING = "call_streaming"  # another stream is serving the call
BUSY = "busy"  # a transcription stream at MAX_CONCURRENT_CALLS
ROUTE_OFF = "route_off"  # the transcription route while FORWARD_TO_NUMBER is unset
# Sockets refused for their URL or route alone never were calls of ours: not counted as refused calls.
NOT_CALLS = frozenset({*PATH_REFUSALS, ROUTE_OFF})


class StreamGate:
    def __init__(self, tokens: StreamTokens, claims: Claims, *, start_timeout_s: float, max_pending: int,
                 max_message_bytes: int,
                 on_refused: Callable[[str, str], None] = lambda route, reason: None) -> None:
        self.tokens = tokens
        self.claims = claims
        self._holders: dict[int, str] = {}  # id(start) → its claim on its call
        self.start_timeout_s = start_timeout_s
        self.max_pending = max_pending
        self.max_message_bytes = max_message_bytes
        self.on_refused = on_refused  # told the route (purpose) and the reason, one of the names above
        self.waiting: set[tuple[str, str]] = set()  # (purpose, call sid) of the pending sockets

    @property
    def pending(self) -> int:
        return len(self.waiting)

    async def admit(self, ws: WebSocket, purpose: str, segment: str | None,
                    wire: MediaWire = TWILIO_MEDIA) -> tw.Start | None:
        """Accepts the socket and returns its verified ``start``; None when it was refused (closed).
        ``segment``: the signed path segment of the socket's URL (None: the bare route). ``wire``:
        the carrier's media format (its ``start`` is read through it into the neutral one)."""
        path = check_segment(self.tokens, segment, purpose, time.time())
        if isinstance(path, PathRefusal):
            log.warning("stream refused at the handshake from %s: %s", ws.client.host if ws.client else "?",
                        path.detail)
            return await self._refuse_handshake(ws, purpose, path.reason)
        waiting = (purpose, path.call_sid)
        if waiting in self.waiting:
            log.warning("call %s: stream refused: another socket on its URL is waiting for its start",
                        path.call_sid)
            return await self._refuse_handshake(ws, purpose, CALL_PENDING)
        if self.pending >= self.max_pending:
            log.warning("stream refused: %d streams are already waiting for their start", self.pending)
            return await self._refuse_handshake(ws, purpose, PENDING_LIMIT, TRY_AGAIN_LATER)
        self.waiting.add(waiting)
        try:
            await ws.accept()
            try:
                start = await self._first_start(ws, wire)
            except tw.BadStart as exc:  # names no call we could serve: refused like a bad token
                log.warning("stream %s: stream refused: bad start: %s", path.call_sid, exc)
                self.on_refused(purpose, BAD_START)
                await _close(ws, POLICY_VIOLATION, "stream refused")
                return None
            if start is None:
                self.on_refused(purpose, NO_START)
                return None
            refused = await self._refusal(start, purpose, path.call_sid)
            if refused:
                reason, why = refused
                log.warning("call %s: stream refused: %s", start.call_sid, why)
                self.on_refused(purpose, reason)
                await _close(ws, POLICY_VIOLATION, "stream refused")
                return None
            return start
        finally:
            self.waiting.discard(waiting)

    async def _refuse_handshake(self, ws: WebSocket, purpose: str, reason: str,
                                code: int = POLICY_VIOLATION) -> None:
        self.on_refused(purpose, reason)
        await _close(ws, code)  # before the handshake completes: HTTP 403
        return None

    async def release(self, start: tw.Start, purpose: str) -> None:
        """The admitted stream is over (or handed its call over): its call may be streamed again
        (with a new token). Only this stream's own claim is freed, and only once: a successor that
        claimed the call meanwhile keeps it."""
        holder = self._holders.pop(id(start), None)
        if holder:
            await self.claims.release(stream_claim_key(purpose, start.call_sid), holder)

    async def _first_start(self, ws: WebSocket, wire: MediaWire) -> tw.Start | None:
        deadline = asyncio.get_running_loop().time() + self.start_timeout_s
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(ws.receive(), max(remaining, 0.0))
            except TimeoutError:
                log.warning("stream closed: no start within %g s", self.start_timeout_s)
                await _close(ws, POLICY_VIOLATION, "no start")
                return None
            if message["type"] == "websocket.disconnect":
                return None
            raw = payload(message)
            if len(raw) > self.max_message_bytes:
                log.warning("stream ?: message of %d bytes before start dropped", len(raw))
                continue
            try:
                events = wire.parse(raw)
            except tw.BadStart:
                raise
            except UnusedEvent:
                continue
            except tw.TwilioProtocolError as exc:
                log.warning("stream ?: bad %s message before start: %s", wire.label, exc)
                continue
            for event in events:
                if isinstance(event, tw.Start):
                    return event
                if isinstance(event, tw.Media):
                    log.warning("call ?: media before start dropped (no call sid yet)")

    async def _refusal(self, start: tw.Start, purpose: str, url_call_sid: str) -> tuple[str, str] | None:
        """(reason, why) when the start is refused; None when it opens the call."""
        if not valid_call_sid(start.call_sid):
            return BAD_START, "the call sid is not Twilio's (CA + 32 hex digits)"
        if start.call_sid != url_call_sid:
            return BAD_START, "the stream's URL was issued for another call"
        now = time.time()
        checked = self.tokens.check(start.custom_parameters, start.call_sid, now, purpose)
        if not isinstance(checked, VerifiedToken):
            return BAD_START, checked
        if not await self.claims.claim(f"token:{checked.mac}", checked.expires - now + 1.0):
            return TOKEN_REUSED, "stream token was already used"
        holder = await self.claims.claim(stream_claim_key(purpose, start.call_sid), STREAM_CLAIM_TTL_S)
        if not holder:
            return CALL_STREAMING, "another stream is already serving this call"
        self._holders[id(start)] = holder  # the start is this stream's until release()
        return None


async def _close(ws: WebSocket, code: int, reason: str | None = None) -> None:
    with contextlib.suppress(Exception):  # the peer may be gone already: nothing left to close
        await ws.close(code, reason)


def stream_claim_key(purpose: str, call_sid: str) -> str:
    return f"stream:{purpose}:{call_sid}"
