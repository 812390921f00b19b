"""HTTP tools: a signed JSON POST per call of the tool; the response's JSON is the output.

The body is ``{"tool", "arguments", "call"}``; ``X-Telephony-Signature`` is the hex HMAC-SHA256 of
the exact body bytes, keyed by TOOLS_SECRET, so the business can tell our requests from others'.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx

from telephony.core.function_tools import FunctionTool
from telephony.serve.tools.context import CallContext, ToolFailure, ToolSession

SIGNATURE_HEADER = "X-Telephony-Signature"
MAX_RESPONSE_BYTES = 64 * 1024


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def run(tool: FunctionTool, arguments: dict[str, Any], context: CallContext, session: ToolSession) -> Any:
    body = json.dumps({"tool": tool.name, "arguments": arguments, "call": context.as_json()},
                      separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(session.secret, body)}
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
