"""Function tools that reach the business: HTTP webhooks, Python callables, tools on MCP servers.

A profile declares them (``[[tools.http]]``, ``[[tools.python]]``, ``[[tools.mcp]]``). The core
checks the model's arguments against the declared JSON schema and asks its shell to run the tool
(a ``RunTool`` action); running one is I/O and lives in ``telephony.serve.tools``. Arguments are
validated with ``jsonschema`` (the reference validator, every draft, clear messages).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import best_match

from telephony.wire.realtime import RemoteMcpServer, Tool

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the Realtime API accepts as a function name
DEFAULT_TIMEOUT_S = 10.0
EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}
MCP_RUN_BY = ("bridge", "provider")


class ToolDeclarationError(ValueError):
    """A tool entry in a profile that cannot be used; the message names it and the key."""


@dataclass(frozen=True)
class FunctionTool:
    """One tool the model may call; ``kind`` names the shell's runner ("http", "python", "mcp")."""

    kind: str
    name: str
    description: str
    parameters: dict[str, Any]
    target: str  # the webhook URL, "package.module:callable", or the MCP server's URL
    timeout_s: float = DEFAULT_TIMEOUT_S
    headers: dict[str, str] = field(default_factory=dict, hash=False)  # MCP servers only

    def declaration(self) -> Tool:
        return Tool(self.name, self.description, self.parameters)

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.parameters)

    def check_arguments(self, arguments: Any) -> str | None:
        """None when the arguments fit the schema; else the first reason they do not."""
        error = best_match(self._validator.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where}: {error.message}" if where else error.message


@dataclass(frozen=True)
class McpServer:
    """An MCP server whose tools the model may call; ``run_by`` says who is its client."""

    label: str
    url: str
    allowed_tools: tuple[str, ...] = ()  # empty: every tool the server lists
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    run_by: str = "bridge"  # "bridge" (any dialect) or "provider" (GA sessions take the server)
    timeout_s: float = DEFAULT_TIMEOUT_S

    def remote(self) -> RemoteMcpServer:
        return RemoteMcpServer(self.label, self.url, self.allowed_tools, dict(self.headers))

    def tool(self, name: str, description: str, parameters: dict[str, Any] | None) -> FunctionTool | None:
        """One of the server's listed tools as a function tool, or None if it is not allowed."""
        if (self.allowed_tools and name not in self.allowed_tools) or not TOOL_NAME.match(name):
            return None
        schema = parameters if isinstance(parameters, dict) and parameters.get("type") == "object" else EMPTY_OBJECT
        return FunctionTool("mcp", name, description, schema, self.url, self.timeout_s, dict(self.headers))


def parse_tools(table: dict[str, Any], path: Path, reserved: set[str]) -> tuple[
        tuple[FunctionTool, ...], tuple[McpServer, ...]]:
    """The ``[[tools.http]]``, ``[[tools.python]]`` and ``[[tools.mcp]]`` entries of a profile."""
    tools = [_function_tool("http", entry, path) for entry in _entries(table, "http", path)]
    tools += [_function_tool("python", entry, path) for entry in _entries(table, "python", path)]
    seen = set(reserved)
    for tool in tools:
        if tool.name in seen:
            raise ToolDeclarationError(f"{path}: tool name {tool.name!r} is used twice (or is a built-in tool)")
        seen.add(tool.name)
    servers = tuple(_mcp_server(i, entry, path) for i, entry in enumerate(_entries(table, "mcp", path)))
    return tuple(tools), servers


def _entries(table: dict[str, Any], kind: str, path: Path) -> list[dict[str, Any]]:
    entries = table.get(kind, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ToolDeclarationError(f"{path}: tools.{kind} must be an array of tables ([[tools.{kind}]])")
    return entries


def _text(entry: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ToolDeclarationError(f"{where}: {key} is required and must be a non-empty string")
    return value.strip()


def _timeout(entry: dict[str, Any], where: str) -> float:
    value = entry.get("timeout_seconds", DEFAULT_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 300:
        raise ToolDeclarationError(f"{where}: timeout_seconds must be a number of seconds in (0, 300]")
    return float(value)


def _http_url(value: str, key: str, where: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ToolDeclarationError(f"{where}: {key} must be an http(s) URL")
    return value


def _function_tool(kind: str, entry: dict[str, Any], path: Path) -> FunctionTool:
    name = entry.get("name")
    where = f"{path}: [[tools.{kind}]] {name!r}"
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ToolDeclarationError(f"{where}: name must be 1-64 letters, digits, '_' or '-'")
    parameters = entry.get("parameters", EMPTY_OBJECT)
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ToolDeclarationError(f"{where}: parameters must be a JSON schema of type \"object\"")
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        raise ToolDeclarationError(f"{where}: parameters is not a valid JSON schema: {exc.message}") from None
    if kind == "http":
        target = _http_url(_text(entry, "url", where), "url", where)
    else:
        target = _text(entry, "function", where)
        module, _, attribute = target.partition(":")
        if not module or not attribute:
            raise ToolDeclarationError(f"{where}: function must be \"package.module:callable\"")
    return FunctionTool(kind, name, _text(entry, "description", where), json.loads(json.dumps(parameters)),
                        target, _timeout(entry, where))


def _mcp_server(index: int, entry: dict[str, Any], path: Path) -> McpServer:
    where = f"{path}: [[tools.mcp]] #{index + 1}"
    url = _http_url(_text(entry, "server_url", where), "server_url", where)
    allowed = entry.get("allowed_tools", [])
    if not isinstance(allowed, list) or not all(isinstance(n, str) for n in allowed):
        raise ToolDeclarationError(f"{where}: allowed_tools must be a list of tool names")
    headers = entry.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ToolDeclarationError(f"{where}: headers must be a table of strings")
    run_by = entry.get("run_by", "bridge")
    if run_by not in MCP_RUN_BY:
        raise ToolDeclarationError(f"{where}: run_by must be one of {', '.join(MCP_RUN_BY)}")
    label = entry.get("label", f"mcp{index + 1}")
    if not isinstance(label, str) or not TOOL_NAME.match(label):
        raise ToolDeclarationError(f"{where}: label must be 1-64 letters, digits, '_' or '-'")
    return McpServer(label, url, tuple(allowed), {str(k): v for k, v in headers.items()}, run_by,
                     _timeout(entry, where))
