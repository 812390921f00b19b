"""MCP tools, with the bridge as the MCP client (the ``mcp`` package, streamable HTTP).

A short session per operation (list the tools when a call starts, call one when the model asks):
nothing to keep alive between a call's tool calls, and a server restart costs nothing. The mcp
package is imported on first use: it weighs ~50 MB, which a deployment without MCP servers
should not pay.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from telephony.core.function_tools import FunctionTool, McpServer
from telephony.serve.tools.context import CallContext, ToolFailure, ToolSession


@asynccontextmanager
async def _client(url: str, headers: dict[str, str], timeout_s: float) -> AsyncIterator[Any]:
    import httpx2  # the mcp package's HTTP client (its 2.x transports take one for the headers)
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers=headers, timeout=timeout_s) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


async def list_tools(server: McpServer) -> list[FunctionTool]:
    async with _client(server.url, server.headers, server.timeout_s) as client:
        listed = await client.list_tools()
    found = (server.tool(t.name, t.description or t.title or t.name, t.input_schema) for t in listed.tools)
    return [tool for tool in found if tool is not None]


async def run(tool: FunctionTool, arguments: dict[str, Any], context: CallContext, session: ToolSession) -> Any:
    async with _client(tool.target, tool.headers, tool.timeout_s) as client:
        result = await client.call_tool(tool.name, arguments)
    text = "\n".join(part.text for part in result.content if getattr(part, "type", "") == "text")
    if result.is_error:
        raise ToolFailure(text[:500] or "the MCP tool reported an error")
    if result.structured_content is not None:
        return result.structured_content
    try:
        return json.loads(text)  # most servers put their JSON in one text part
    except ValueError:
        return {"content": text}
