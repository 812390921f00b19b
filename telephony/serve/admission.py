"""Admission of a media stream: a websocket becomes a call only once its ``start`` is verified.

Until then it is *pending*: it has ``STREAM_START_TIMEOUT_SECONDS`` to send a ``start`` (Twilio
sends one at once; ``connected`` and anything else do not extend the deadline), and at most
``MAX_PENDING_STREAMS`` may wait at a time. A ``start`` is verified here, before anything keyed by
the call sid it names exists (call registry, transcript feed, call record): its sid must have
Twilio's shape, its token must be signed for this route, unused, and no other stream may be
serving that call. A refused stream is closed with 1008 and counted as refused.
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
from telephony.wire import twilio as tw

log = logging.getLogger("telephony.admission")

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
# A stream's claim on its call outlives any call (Twilio's longest is 24 h); released at its end.
STREAM_CLAIM_TTL_S = 24 * 3600.0


class StreamGate:
    def __init__(self, tokens: StreamTokens, claims: Claims, *, start_timeout_s: float, max_pending: int,
                 max_message_bytes: int, on_refused: Callable[[str], None] = lambda reason: None) -> None:
        self.tokens = tokens
        self.claims = claims
        self.start_timeout_s = start_timeout_s
        self.max_pending = max_pending
        self.max_message_bytes = max_message_bytes
        self.on_refused = on_refused  # told "pending_limit", "no_start" or "bad_start"
        self.pending = 0

    async def admit(self, ws: WebSocket, purpose: str) -> tw.Start | None:
        """Accepts the socket and returns its verified ``start``; None when it was refused (closed)."""
        if self.pending >= self.max_pending:
            log.warning("stream refused: %d streams are already waiting for their start", self.pending)
            self.on_refused("pending_limit")
            await _close(ws, TRY_AGAIN_LATER)  # before the handshake completes: HTTP 403
            return None
        self.pending += 1
        try:
            await ws.accept()
            start = await self._first_start(ws)
            if start is None:
                self.on_refused("no_start")
                return None
            refused = await self._refusal(start, purpose)
            if refused:
                log.warning("call %s: stream refused: %s", start.call_sid, refused)
                self.on_refused("bad_start")
                await _close(ws, POLICY_VIOLATION, "stream refused")
                return None
            return start
        finally:
            self.pending -= 1

    async def release(self, start: tw.Start, purpose: str) -> None:
        """The admitted stream is over: its call may be streamed again (with a new token)."""
        await self.claims.release(stream_claim_key(purpose, start.call_sid))

    async def _first_start(self, ws: WebSocket) -> tw.Start | None:
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
                event = tw.parse(raw)
            except tw.TwilioProtocolError as exc:
                log.warning("stream ?: bad Twilio message before start: %s", exc)
                continue
            if isinstance(event, tw.Start):
                return event
            if isinstance(event, tw.Media):
                log.warning("call ?: media before start dropped (no call sid yet)")

    async def _refusal(self, start: tw.Start, purpose: str) -> str | None:
        if not valid_call_sid(start.call_sid):
            return "the call sid is not Twilio's (CA + 32 hex digits)"
        now = time.time()
        checked = self.tokens.check(start.custom_parameters, start.call_sid, now, purpose)
        if not isinstance(checked, VerifiedToken):
            return checked
        if not await self.claims.claim(f"token:{checked.mac}", checked.expires - now + 1.0):
            return "stream token was already used"
        if not await self.claims.claim(stream_claim_key(purpose, start.call_sid), STREAM_CLAIM_TTL_S):
            return "another stream is already serving this call"
        return None


async def _close(ws: WebSocket, code: int, reason: str | None = None) -> None:
    with contextlib.suppress(Exception):  # the peer may be gone already: nothing left to close
        await ws.close(code, reason)


def stream_claim_key(purpose: str, call_sid: str) -> str:
    return f"stream:{purpose}:{call_sid}"
