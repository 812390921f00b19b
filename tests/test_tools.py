"""Business tools end to end: the real app, a simulated caller, a scripted model that calls the
tool, and the tool's own server (HTTP webhook, MCP server) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import running_app, serve_app
from helpers import simulated_call, stream_parameters, ulaw_silence, validate_event
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import tool_functions
from telephony.core.profile import ProfileError, load_profile
from telephony.core.tool_calls import FILLER_INSTRUCTIONS
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.ops.records import read_records, record_path
from telephony.serve.app import create_app
from telephony.settings import Settings

SECRET = "tools-secret-for-tests"
CALLER = {"from": "+15550100001", "to": "+15550100002", "direction": "inbound",
          "metadata": json.dumps({"customer": 7})}

PROFILE = """
[agent]
instructions = "You help callers with their orders."
greeting = "Hello, order desk."

[tools]
enabled = ["end_call"]
filler_after_ms = {filler_after_ms}
{tools}
"""

HTTP_TOOL = """
[[tools.http]]
name = "lookup_order"
description = "Find an order by its number"
url = "{url}"
parameters = {{ type = "object", properties = {{ order = {{ type = "string" }} }}, required = ["order"] }}
timeout_seconds = {timeout}
"""


class ToolServer:
    """A business's webhook: records each request; ``answer`` says how to reply."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.delay_s = 0.0
        self.status = 200
        self.body: bytes = b'{"status": "shipped", "eta": "Tuesday"}'
        self.app = Starlette(routes=[Route("/hooks/{name}", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        self.requests.append((dict(request.headers), await request.body()))
        await asyncio.sleep(self.delay_s)
        return Response(self.body, status_code=self.status, media_type="application/json")


def write_profile(path: Path, tools: str, filler_after_ms: int = 1500) -> Path:
    path.write_text(PROFILE.format(tools=tools, filler_after_ms=filler_after_ms))
    return path


def settings(server: ScriptedRealtimeServer, dialect: str = "beta", **kw) -> Settings:
    return Settings(realtime_url=server.url, realtime_api_key="sk-x", realtime_dialect=dialect,
                    tools_secret=SECRET, **kw)


def function_outputs(conn) -> list[dict]:
    return [e["item"] for e in conn.of_type("conversation.item.create")
            if e["item"]["type"] == "function_call_output"]


def greeting_then_tool(name: str, arguments: str, **kw) -> Script:
    """The greeting (response 0) ends with the model calling the tool."""
    return Script(response_ms=300, speed=5.0, respond_to_turns=False, tool_calls={0: (name, arguments)}, **kw)


async def run_call(profile_path: Path, script: Script, dialect: str = "beta", seconds: float = 2.5, **kw):
    async with ScriptedRealtimeServer(script, dialect=dialect) as server, \
            running_app(settings(server, dialect, **kw), load_profile(profile_path)) as (app, host):
        sim = simulated_call(app, host, parameters=CALLER, caller_audio=b"", duration_s=seconds)
        result = await sim.run()
        metrics = app.state.metrics.render().decode()
    return server.connections[0], sim, result, metrics


@contextlib.asynccontextmanager
async def tool_server():
    tools = ToolServer()
    async with serve_app(tools.app) as host:
        tools.url = f"http://{host}/hooks/lookup_order"
        yield tools


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_http_tool_is_signed_gets_arguments_and_call_and_answers_the_model(tmp_path, dialect):
    async with tool_server() as tools:
        profile = write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url=tools.url, timeout=5))
        conn, sim, _, metrics = await run_call(profile, greeting_then_tool("lookup_order", '{"order": "A-17"}'),
                                               dialect, call_records_dir=tmp_path / "records")
    for event in conn.received:
        validate_event(event, dialect, "client")
    declared = {t["name"]: t for t in conn.of_type("session.update")[0]["session"]["tools"]}
    assert declared["lookup_order"]["parameters"]["required"] == ["order"]
    ((headers, body),) = tools.requests
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-telephony-signature"], expected)
    assert json.loads(body) == {"tool": "lookup_order", "arguments": {"order": "A-17"}, "call": {
        "call_sid": sim.call_sid, "from": "+15550100001", "to": "+15550100002", "direction": "inbound",
        "metadata": {"customer": 7}}}
    (output,) = function_outputs(conn)
    assert json.loads(output["output"]) == {"status": "shipped", "eta": "Tuesday"}
    # The output, then a request that the model speak about it.
    creates = conn.of_type("response.create")
    assert len(creates) == 2
    assert conn.received.index(creates[1]) > next(i for i, e in enumerate(conn.received)
                                                  if e.get("item", {}).get("type") == "function_call_output")
    (record,) = [r for r in read_records(record_path(tmp_path / "records", sim.call_sid)) if r["kind"] == "tool_call"]
    assert record["name"] == "lookup_order" and record["arguments"] == {"order": "A-17"}
    assert record["output"] == {"status": "shipped", "eta": "Tuesday"} and record["outcome"] == "ok"
    assert 0 < record["latency_ms"] < 5000
    assert 'telephony_tool_calls_total{outcome="ok",tool="lookup_order"} 1.0' in metrics
    assert 'telephony_tool_latency_seconds_count{tool="lookup_order"} 1.0' in metrics


async def test_slow_tool_keeps_audio_flowing_and_asks_once_for_a_holding_phrase(tmp_path):
    async with tool_server() as tools:
        tools.delay_s = 1.2
        profile = write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url=tools.url, timeout=5),
                                filler_after_ms=300)
        script = greeting_then_tool("lookup_order", '{"order": "A-17"}')
        async with ScriptedRealtimeServer(script) as server, \
                running_app(settings(server), load_profile(profile)) as (app, host):
            sim = simulated_call(app, host, parameters=CALLER, caller_audio=b"", duration_s=3.5)
            task = asyncio.create_task(sim.run())
            conn = await _connection(server)
            appends = lambda: len(conn.of_type("input_audio_buffer.append"))  # noqa: E731
            await _until(lambda: any(e["type"] == "response.done" and len(e["response"]["output"]) == 2
                                     for e in conn.sent))
            at_call = appends()
            await _until(lambda: function_outputs(conn))
            at_output = appends()
            await task
    # ~60 caller frames (20 ms each) reached the model while the tool took 1.2 s.
    print(f"caller frames forwarded while the tool ran: {at_output - at_call}")
    assert at_output - at_call >= 30
    creates = conn.of_type("response.create")
    fillers = [c for c in creates if c.get("response", {}).get("instructions") == FILLER_INSTRUCTIONS]
    assert len(fillers) == 1 and len(creates) == 3  # greeting, one holding phrase, the answer
    order = [e for e in conn.received if e["type"] in ("response.create", "conversation.item.create")]
    assert order.index(fillers[0]) < next(i for i, e in enumerate(order) if e["type"] == "conversation.item.create")


async def _connection(server):
    await _until(lambda: server.connections)
    return server.connections[0]


async def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("status,delay_s,body,outcome,error", [
    (500, 0.0, b'{"oops": 1}', "error", "HTTP 500"),
    (200, 2.0, b"{}", "timeout", "did not answer within 0.5 s"),
    (200, 0.0, b"<html>", "error", "not JSON"),
    (200, 0.0, b'"' + b"x" * 70_000 + b'"', "error", "64 KB"),
])
async def test_failing_http_tool_answers_the_model_with_an_error(tmp_path, status, delay_s, body, outcome, error):
    async with tool_server() as tools:
        tools.status, tools.delay_s, tools.body = status, delay_s, body
        profile = write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url=tools.url, timeout=0.5))
        conn, sim, _, metrics = await run_call(profile, greeting_then_tool("lookup_order", '{"order": "A-17"}'))
    (output,) = function_outputs(conn)
    assert error in json.loads(output["output"])["error"]
    assert len(conn.of_type("response.create")) == 2  # the model is asked to tell the caller
    assert f'telephony_tool_calls_total{{outcome="{outcome}",tool="lookup_order"}} 1.0' in metrics


async def test_arguments_that_break_the_schema_make_no_request(tmp_path):
    async with tool_server() as tools:
        profile = write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url=tools.url, timeout=5))
        conn, *_, metrics = await run_call(profile, greeting_then_tool("lookup_order", '{"order": 17}'))
    assert tools.requests == []
    (output,) = function_outputs(conn)
    assert json.loads(output["output"]) == {"error": "invalid arguments: order: 17 is not of type 'string'"}
    assert len(conn.of_type("response.create")) == 2
    assert 'telephony_tool_calls_total{outcome="invalid_arguments",tool="lookup_order"} 1.0' in metrics


PYTHON_TOOLS = """
[[tools.python]]
name = "check_stock"
description = "Units of an item in stock"
function = "tool_functions:check_stock"
parameters = { type = "object", properties = { item = { type = "string" } }, required = ["item"] }

[[tools.python]]
name = "book_table"
description = "Book a table"
function = "tool_functions:book_table"
parameters = { type = "object", properties = { day = { type = "string" }, people = { type = "integer" } } }
"""


@pytest.mark.parametrize("name,arguments,output", [
    ("check_stock", {"item": "socks"}, {"item": "socks", "units": 3}),
    ("book_table", {"day": "friday", "people": 2}, {"booked": True, "day": "friday"}),
    ("book_table", {"day": "friday", "people": 12}, {"error": "ValueError: no table for more than 8"}),
])
async def test_python_tools_sync_and_async_get_arguments_and_the_call(tmp_path, name, arguments, output):
    tool_functions.calls.clear()
    profile = write_profile(tmp_path / "agent.toml", PYTHON_TOOLS)
    conn, sim, *_ = await run_call(profile, greeting_then_tool(name, json.dumps(arguments)))
    (got,) = function_outputs(conn)
    assert json.loads(got["output"]) == output
    ((tool, call, args),) = tool_functions.calls
    assert tool == name and {k: args[k] for k in arguments} == arguments
    assert args.get("thread", True)  # a sync tool ran in a worker thread
    assert (call.call_sid, call.from_, call.to, call.metadata) == (sim.call_sid, "+15550100001",
                                                                    "+15550100002", {"customer": 7})


def test_a_python_tool_that_cannot_be_loaded_stops_the_app_at_startup(tmp_path):
    profile = write_profile(tmp_path / "agent.toml", PYTHON_TOOLS.replace("tool_functions:check_stock",
                                                                          "tool_functions:missing"))
    with pytest.raises(ProfileError, match="tool_functions:missing"):
        create_app(Settings(realtime_api_key="sk-x"), load_profile(profile))


def test_an_http_tool_without_tools_secret_stops_the_app_at_startup(tmp_path):
    profile = write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url="https://example.com/x", timeout=5))
    with pytest.raises(ProfileError, match="TOOLS_SECRET"):
        create_app(Settings(realtime_api_key="sk-x"), load_profile(profile))
