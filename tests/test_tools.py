"""Business tools end to end: the real app, a simulated caller, a scripted model that calls the
tool, and the tool's own server (HTTP webhook, MCP server) on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import running_app, serve_app
from helpers import active_spans, simulated_call, stream_parameters, stream_url, validate_event
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.routing import Route

import tool_functions
from telephony.core.profile import ProfileError, load_profile
from telephony.core.tool_calls import FILLER_INSTRUCTIONS
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.ops.records import read_records, record_path
from telephony.serve.app import create_app
from telephony.settings import Settings, SettingsError

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
        body = await request.body()
        self.requests.append((dict(request.headers), body))
        try:  # as a business would: the Standard Webhooks package checks signature and freshness
            Webhook(SECRET.encode()).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            return Response(f"refused: {exc}", status_code=401)
        await asyncio.sleep(self.delay_s)
        return Response(self.body, status_code=self.status, media_type="application/json")


def write_profile(path: Path, tools: str, filler_after_ms: int = 1500) -> Path:
    path.write_text(PROFILE.format(tools=tools, filler_after_ms=filler_after_ms))
    return path


def settings(server: ScriptedRealtimeServer, dialect: str = "beta", **kw) -> Settings:
    return Settings(twilio_validate_signatures=False,
                    realtime_url=server.url, realtime_api_key="sk-x", realtime_dialect=dialect,
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
    Webhook(SECRET.encode()).verify(body, headers)  # Standard Webhooks: id, timestamp and body signed
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
    for event in conn.received:
        validate_event(event, "beta", "client")
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
        create_app(Settings(twilio_validate_signatures=False, realtime_api_key="sk-x"), load_profile(profile))


def test_an_http_tool_without_tools_secret_stops_the_app_at_startup(tmp_path):
    profile = write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url="https://example.com/x", timeout=5))
    with pytest.raises(ProfileError, match="TOOLS_SECRET"):
        create_app(Settings(twilio_validate_signatures=False, realtime_api_key="sk-x"), load_profile(profile))


# --- MCP ---

@contextlib.asynccontextmanager
async def mcp_server(delay_s: float = 0.0):
    """The mcp package's own server over streamable HTTP on loopback; yields (url, headers seen).
    ``delay_s``: requests in its first seconds are answered only then (a server slow to start)."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("shop")
    seen: list[dict[str, str]] = []

    @server.tool()
    def check_stock(item: str) -> dict:
        """Units of an item in stock"""
        return {"item": item, "units": 7}

    @server.tool()
    def refund_everything() -> str:
        """Not for the phone agent"""
        return "refunded"

    inner = server.streamable_http_app()

    ready_at = time.monotonic() + delay_s

    async def app(scope, receive, send):  # notes the headers each request brought
        if scope["type"] == "http":
            seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
            await asyncio.sleep(max(0.0, ready_at - time.monotonic()))
        await inner(scope, receive, send)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))  # runs its session manager
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    await _until(lambda: uv.started)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp", seen
    finally:
        uv.should_exit = True
        await task
        sock.close()


def mcp_table(url: str, run_by: str = "bridge") -> str:
    return f"""
[[tools.mcp]]
server_url = "{url}"
allowed_tools = ["check_stock"]
headers = {{ Authorization = "Bearer mcp-token" }}
run_by = "{run_by}"
"""


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_a_tool_on_an_mcp_server_is_offered_and_called_by_the_bridge(tmp_path, dialect):
    async with mcp_server() as (url, seen):
        profile = write_profile(tmp_path / "agent.toml", mcp_table(url))
        conn, *_, metrics = await run_call(profile, greeting_then_tool("check_stock", '{"item": "socks"}'), dialect)
    for event in conn.received:
        validate_event(event, dialect, "client")
    declared = {t["name"]: t for t in conn.of_type("session.update")[0]["session"]["tools"]}
    assert "check_stock" in declared and "refund_everything" not in declared  # allowed_tools
    assert declared["check_stock"]["parameters"]["required"] == ["item"]
    (output,) = function_outputs(conn)
    assert json.loads(output["output"]) == {"item": "socks", "units": 7}
    assert len(conn.of_type("response.create")) == 2
    assert seen and all(h.get("authorization") == "Bearer mcp-token" for h in seen)
    assert 'telephony_tool_calls_total{outcome="ok",tool="check_stock"} 1.0' in metrics


async def test_an_mcp_server_run_by_the_provider_is_passed_through_in_the_ga_session(tmp_path):
    profile = write_profile(tmp_path / "agent.toml", mcp_table("https://mcp.example.com/mcp", "provider"))
    conn, *_ = await run_call(profile, Script(response_ms=300, speed=5.0, respond_to_turns=False), "ga", seconds=1.0)
    update = conn.of_type("session.update")[0]
    validate_event(update, "ga", "client")
    (mcp,) = [t for t in update["session"]["tools"] if t["type"] == "mcp"]
    assert mcp == {"type": "mcp", "server_label": "mcp1", "server_url": "https://mcp.example.com/mcp",
                   "allowed_tools": ["check_stock"], "headers": {"Authorization": "Bearer mcp-token"},
                   "require_approval": "never"}


def test_an_mcp_server_run_by_the_provider_needs_the_ga_dialect(tmp_path):
    profile = write_profile(tmp_path / "agent.toml", mcp_table("https://mcp.example.com/mcp", "provider"))
    with pytest.raises(ProfileError, match="GA dialect"):
        create_app(Settings(twilio_validate_signatures=False, realtime_api_key="sk-x"), load_profile(profile))


async def test_an_mcp_server_that_is_down_leaves_the_call_going_without_its_tools(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    profile = write_profile(tmp_path / "agent.toml", mcp_table(url))
    conn, _, result, _ = await run_call(profile, Script(response_ms=300, speed=5.0, respond_to_turns=False),
                                        seconds=1.5)
    sock.close()
    assert [t["name"] for t in conn.of_type("session.update")[0]["session"]["tools"]] == ["end_call"]
    assert len(conn.of_type("response.create")) == 1 and active_spans(result.agent)  # greeted as usual


# --- Profiles per number, and the empty greeting ---

def profile_directory(tmp_path: Path) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "default.toml").write_text('[agent]\ninstructions = "You are the front desk."\n')
    (folder / "sales.toml").write_text('numbers = ["+15550002222", "sip:sales@example.com"]\n'
                                       '[agent]\ninstructions = "You are the sales desk."\n'
                                       'fallback = "Sales is closed."\n')
    return folder


@pytest.mark.parametrize("to,instructions", [("+15550002222", "You are the sales desk."),
                                             ("sip:Sales@example.com;transport=tls", "You are the sales desk."),
                                             ("+15559999999", "You are the front desk.")])
async def test_the_called_number_picks_the_profile(tmp_path, to, instructions):
    folder = profile_directory(tmp_path)
    script = Script(response_ms=300, speed=5.0, respond_to_turns=False)
    async with ScriptedRealtimeServer(script) as server, \
            running_app(settings(server, agent_profile=str(folder)), create_app_profile(folder)) as (app, host):
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://{host}/twilio/voice",
                                  data={"CallSid": "CA" + "5" * 32, "From": "+15551230000", "To": to},
                                  headers={"X-Forwarded-Proto": "https", "Host": "bridge.example.com"})
        params = stream_parameters(r.text)
        from telephony.offline.simulator import TwilioCallSimulator
        await TwilioCallSimulator(stream_url(app, host, "CA" + "5" * 32), call_sid="CA" + "5" * 32,
                                  custom_parameters=params, duration_s=0.8).run()
        # The choice is signed with the rest: a stream naming another profile is refused.
        forged = await TwilioCallSimulator(stream_url(app, host, "CA" + "5" * 32), call_sid="CA" + "5" * 32,
                                           custom_parameters={**params, "profile": "default"
                                                              if params["profile"] == "sales" else "sales"},
                                           duration_s=0.5).run()
    assert forged.close_code == 1008
    assert params["profile"] == ("sales" if "sales" in instructions else "default")
    assert ("Sales is closed." in r.text) == ("sales" in instructions)
    (conn,) = server.connections
    assert conn.of_type("session.update")[0]["session"]["instructions"] == instructions


def create_app_profile(folder: Path):
    from telephony.core.profile_choice import load_profiles

    return load_profiles(folder)


def test_a_profile_directory_needs_a_default_and_numbers_listed_once(tmp_path):
    from telephony.core.profile_choice import load_profiles

    folder = profile_directory(tmp_path)
    (folder / "support.toml").write_text('numbers = ["+15550002222"]\n[agent]\ninstructions = "Support."\n')
    with pytest.raises(ProfileError, match=r"\+15550002222 is listed by profiles 'sales' and 'support'"):
        load_profiles(folder)
    (folder / "support.toml").unlink()
    (folder / "default.toml").unlink()
    with pytest.raises(ProfileError, match="default.toml"):
        load_profiles(folder)


def test_serve_with_an_unusable_tool_says_why_and_exits(tmp_path, monkeypatch, capsys):
    from telephony.cli import main

    profile = write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url="https://example.com/x", timeout=5))
    monkeypatch.setenv("AGENT_PROFILE", str(profile))
    monkeypatch.delenv("TOOLS_SECRET", raising=False)
    monkeypatch.setenv("TWILIO_VALIDATE_SIGNATURES", "false")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: profile 'agent': HTTP tool 'lookup_order' needs TOOLS_SECRET" in err


def test_tool_requests_signed_the_standard_webhooks_way_cannot_be_replayed_later():
    """Only the body used to be signed: a captured request verified forever. The timestamp is
    signed now, and the receiver's package refuses one older than its window (5 minutes)."""
    from telephony.serve.tools.http_tool import signature_headers

    body = b'{"tool":"lookup_order","arguments":{"order":"A-17"}}'
    receiver = Webhook(SECRET.encode())
    fresh = signature_headers(SECRET, body, time.time())
    receiver.verify(body, fresh)
    assert fresh["webhook-id"] != signature_headers(SECRET, body, time.time())["webhook-id"]
    with pytest.raises(WebhookVerificationError, match="too old"):  # replayed ten minutes later
        receiver.verify(body, signature_headers(SECRET, body, time.time() - 600))
    with pytest.raises(WebhookVerificationError, match="No matching signature"):  # a fresh stamp forged on
        receiver.verify(body, {**fresh, "webhook-timestamp": str(int(time.time()) + 1)})
    whsec = "whsec_" + base64.b64encode(b"sixteen byte key").decode()  # the standard's own secret form
    Webhook(whsec).verify(body, signature_headers(whsec, body, time.time()))
    with pytest.raises(SettingsError, match="^TOOLS_SECRET: a whsec_ secret must be base64"):
        Settings.from_env({"TOOLS_SECRET": "whsec_not base64!"})
