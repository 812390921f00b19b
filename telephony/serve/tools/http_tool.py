"""HTTP tools: a signed JSON POST per call of the tool; the response's JSON is the output.

The body is ``{"tool", "arguments", "call"}``, signed the Standard Webhooks way so the business can
tell our requests from others' and refuse a replay: ``webhook-id`` (unique per request),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over
``id.timestamp.body``). Signing only the body let a captured request be sent again at any time;
the timestamp is signed now, and receivers refuse old ones (the ``standardwebhooks`` package: five
minutes). The key is TOOLS_SECRET: a ``whsec_…`` secret is base64 as the standard has it, any other
string is used as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx

from telephony.core.function_tools import FunctionTool
from telephony.serve.tools.context import CallContext, ToolFailure, ToolSession

MAX_RESPONSE_BYTES = 64 * 1024
SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """TOOLS_SECRET as a key: Standard Webhooks' ``whsec_`` + base64, else the string's bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return secret.encode()


def signature_headers(secret: str, body: bytes, now: float, message_id: str | None = None) -> dict[str, str]:
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(now))
    mac = hmac.new(signing_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": message_id, "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}


async def run(tool: FunctionTool, arguments: dict[str, Any], context: CallContext, session: ToolSession) -> Any:
    body = json.dumps({"tool": tool.name, "arguments": arguments, "call": context.as_json()},
                      separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"content-type": "application/json", **signature_headers(session.secret, body, time.time())}
    try:
        async with session.http.stream("POST", tool.target, content=body, headers=headers,
                                       timeout=tool.timeout_s) as response:
            if not 200 <= response.status_code < 300:
                raise ToolFailure(f"the tool answered HTTP {response.status_code}")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > MAX_RESPONSE_BYTES:
                    raise ToolFailure("the tool's answer is larger than 64 KB")
    except httpx.TimeoutException:
        raise TimeoutError from None
    except httpx.HTTPError as exc:  # the URL may carry a key: name the failure, not the address
        raise ToolFailure(f"cannot reach the tool ({type(exc).__name__})") from None
    try:
        return json.loads(data)
    except ValueError:
        raise ToolFailure("the tool's answer is not JSON") from None
