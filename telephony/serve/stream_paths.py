"""The media stream's URL carries a signed path segment, checked before the handshake completes.

Anyone on the internet can open a websocket on ``/twilio/media-stream``; until its ``start``
arrives it waits in the pending pool, and enough of them (reopened as each is closed) would keep
a real caller's stream out. So the TwiML names a URL only we can make:
``/twilio/media-stream/<segment>``, where the segment is ``s1.<expiry>.<call sid>.<mac>`` and the
MAC is an HMAC of the route, the expiry and the call sid under the stream key (the stream
tokens' key: any instance that can verify a ``start`` can verify the URL). A socket without a
valid segment is refused before it is accepted (HTTP 403) and before it takes a pending slot.

Twilio forbids a query string on a ``<Stream url>`` but allows any path, hence a path segment.
The call sid is in it so that one URL admits one call: the gate holds at most one pending socket
per segment's call, and that call's ``start`` only. A URL that leaks (or TwiML fetched with
signatures off) thus holds one slot, not the pool. The ``start`` is still verified as before
(its token in the custom parameters, single use, one stream per call): the segment only decides
who may wait for one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass

from telephony.serve.security import PURPOSES, StreamTokens, valid_call_sid

_VERSION = "s1"
_SEGMENT = re.compile(r"s1\.([0-9]{1,12})\.([A-Za-z0-9]{1,64})\.([A-Za-z0-9_-]{43})")
# (A Plivo stream URL carries its parameters, token included, as one more segment: masked too.)
_MAC_IN_TEXT = re.compile(r"(s1\.[0-9]{1,12}\.[A-Za-z0-9]{1,64}\.)[A-Za-z0-9_-]{43}(/p\.[A-Za-z0-9_-]+)?")

# Why a socket was refused at the handshake, as counted (``telephony_streams_refused_total``).
MISSING_PATH = "missing_path"  # the bare route: no segment at all
BAD_PATH = "bad_path"  # malformed, or not signed by us (a forged MAC, an edited call sid)
EXPIRED_PATH = "expired_path"
WRONG_ROUTE_PATH = "wrong_route_path"  # signed by us, for the other stream route
PATH_REFUSALS = (MISSING_PATH, BAD_PATH, EXPIRED_PATH, WRONG_ROUTE_PATH)


@dataclass(frozen=True)
class StreamPath:
    """A segment that checked out: the call it was issued for."""

    call_sid: str
    expires: int


@dataclass(frozen=True)
class PathRefusal:
    reason: str  # one of PATH_REFUSALS
    detail: str  # for the log; never the segment itself


def _mac(tokens: StreamTokens, purpose: str, expires: int, call_sid: str) -> str:
    message = json.dumps([_VERSION, purpose, expires, call_sid], separators=(",", ":")).encode()
    digest = hmac.new(tokens.key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_segment(tokens: StreamTokens, purpose: str, call_sid: str, now: float) -> str:
    """The path segment for ``call_sid``'s stream on ``purpose``'s route, good for the tokens' TTL."""
    assert purpose in PURPOSES, purpose
    expires = int(now) + tokens.ttl_s
    return f"{_VERSION}.{expires}.{call_sid}.{_mac(tokens, purpose, expires, call_sid)}"


def signed_stream_url(stream_url: str, tokens: StreamTokens, purpose: str, call_sid: str, now: float) -> str:
    """``stream_url`` (a route's wss:// URL, twiml.websocket_url) with the call's signed segment:
    the only URL of that route a socket is accepted on. Every <Stream url> we hand Twilio is one."""
    return f"{stream_url}/{sign_segment(tokens, purpose, call_sid, now)}"


def check_segment(tokens: StreamTokens, segment: str | None, purpose: str, now: float) -> StreamPath | PathRefusal:
    """The call a segment admits to ``purpose``'s route, or why it admits none. A few µs of HMAC:
    no I/O, so a flood of forged sockets costs no more than their handshakes."""
    if segment is None:
        return PathRefusal(MISSING_PATH, "no signed path segment (the bare stream URL)")
    match = _SEGMENT.fullmatch(segment)
    if match is None:
        return PathRefusal(BAD_PATH, "malformed path segment")
    expires, call_sid, mac = int(match[1]), match[2], match[3]
    if not valid_call_sid(call_sid):
        return PathRefusal(BAD_PATH, "the path segment's call sid is not Twilio's")
    if not hmac.compare_digest(mac, _mac(tokens, purpose, expires, call_sid)):
        # (The route is signed, not spelt out: the others are tried only to say why.)
        for other in sorted(PURPOSES - {purpose}):
            if hmac.compare_digest(mac, _mac(tokens, other, expires, call_sid)):
                return PathRefusal(WRONG_ROUTE_PATH, f"path segment was issued for the {other} route")
        return PathRefusal(BAD_PATH, "path segment is not signed by us")
    if now > expires:
        return PathRefusal(EXPIRED_PATH, f"path segment expired {now - expires:.0f} s ago")
    return StreamPath(call_sid, expires)


def redact_segments(text: str) -> str:
    """``text`` with the MAC of any stream URL segment in it masked: uvicorn logs each websocket's
    path, and a URL that is still valid would hold a pending slot for its call."""
    if "s1." not in text:
        return text
    return _MAC_IN_TEXT.sub(lambda m: m[1] + "[redacted]" + ("/p.[redacted]" if m[2] else ""), text)
