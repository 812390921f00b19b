"""Signed stream parameters carried in a stream URL's last path segment (``/p.<base64url JSON>``).

For carriers whose own place for custom data is too small for a signed token, numbers and an
outbound call's instructions (Plivo's ``extraHeaders``: [A-Za-z0-9] and 512 bytes; Vonage's
websocket ``headers``: 512 bytes). The carrier hands the URL back verbatim, the token inside still
binds them to the call, and the log filter masks the segment (``stream_paths.redact_segments``).
The route decodes it and gives it to the carrier's wire, whose start carries it as the custom
parameters, so the gate checks it as for any carrier.
"""

from __future__ import annotations

import base64
import binascii
import json

from telephony.wire import twilio as tw

PARAMS_PREFIX = "p."
MAX_PARAMS_SEGMENT = 3000  # an outbound call's overrides fit (outbound.URL_LIMIT bounds them too)


def parameters_segment(parameters: dict[str, str]) -> str:
    raw = json.dumps(parameters, separators=(",", ":"), ensure_ascii=False).encode()
    return PARAMS_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parameters_from_segment(segment: str) -> dict[str, str]:
    """The parameters of a stream URL's last segment; raises ``BadStart`` when it is not ours
    (its token is checked later, with the start)."""
    if not segment.startswith(PARAMS_PREFIX) or len(segment) > MAX_PARAMS_SEGMENT:
        raise tw.BadStart("stream URL without its parameters segment")
    text = segment[len(PARAMS_PREFIX):]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise tw.BadStart("stream URL whose parameters segment is not base64 JSON") from None
    if not isinstance(decoded, dict):
        raise tw.BadStart("stream URL whose parameters are not an object")
    return {str(k): str(v) for k, v in decoded.items()}
