"""Issue 22 item 15: a call's greeting never waits long for its MCP servers. The session used to be
configured (and the greeting sent) only after discovery, which could take a server's whole timeout
(10 s), and failures were not remembered: while a server was down every call opened in silence."""

from __future__ import annotations

import asyncio
import contextlib

from conftest import running_app
from helpers import active_spans, simulated_call, validate_event
from test_tools import CALLER, mcp_server, mcp_table, settings, write_profile

from telephony.core.profile import load_profile
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve.bridge import MCP_DISCOVERY_DEADLINE_S


@contextlib.asynccontextmanager
async def tcp_peer(answer: bool):
    """A TCP peer on loopback that accepts and then hangs (answer=False) or closes at once; counts
    the connections it got."""
    accepted: list[int] = []

    async def handle(reader, writer):
        accepted.append(1)
        if not answer:
            await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp", accepted
    finally:
        server.close()


async def one_call(profile, seconds: float = 3.0, dialect: str = "beta", between=lambda: None,
                   second_s: float = 2.0):
    script = Script(response_ms=300, speed=5.0, respond_to_turns=False)
    async with ScriptedRealtimeServer(script, dialect=dialect) as server, \
            running_app(settings(server, dialect), load_profile(profile)) as (app, host):
        sim = simulated_call(app, host, parameters=CALLER, caller_audio=b"", duration_s=seconds)
        result = await sim.run()
        between()
        second = await simulated_call(app, host, parameters=CALLER, caller_audio=b"", duration_s=second_s).run()
    return server.connections, result, second


async def test_a_hung_mcp_server_holds_the_greeting_at_most_the_discovery_deadline(tmp_path):
    async with tcp_peer(answer=False) as (url, _):
        (conn, _), result, second = await one_call(write_profile(tmp_path / "agent.toml", mcp_table(url)))
    spans = active_spans(result.agent)
    assert spans, "the caller heard no greeting"
    assert spans[0][0] < MCP_DISCOVERY_DEADLINE_S + 0.5, spans  # was the server's timeout: 10 s
    assert active_spans(second.agent)[0][0] < MCP_DISCOVERY_DEADLINE_S + 0.5  # the next call waits no longer
    assert [t["name"] for t in conn.of_type("session.update")[0]["session"]["tools"]] == ["end_call"]


async def test_a_server_that_failed_is_not_asked_again_for_a_while(tmp_path):
    after_first: list[int] = []
    async with tcp_peer(answer=True) as (url, accepted):
        _, result, second = await one_call(write_profile(tmp_path / "agent.toml", mcp_table(url)), seconds=1.0,
                                           between=lambda: after_first.append(len(accepted)))
    assert active_spans(result.agent) and active_spans(second.agent)
    assert after_first[0] >= 1
    # The second call found the failure remembered: not one more connection (was one per call).
    assert len(accepted) == after_first[0]


async def test_tools_listed_late_are_added_to_the_open_session(tmp_path):
    for dialect in ("beta", "ga"):
        async with mcp_server(delay_s=2.0) as (url, _seen):
            profile = write_profile(tmp_path / f"{dialect}.toml", mcp_table(url))
            (conn, *_), result, _ = await one_call(profile, seconds=3.5, dialect=dialect)
        updates = conn.of_type("session.update")
        for event in conn.received:
            validate_event(event, dialect, "client")
        assert "check_stock" not in [t["name"] for t in updates[0]["session"]["tools"]]
        assert active_spans(result.agent)[0][0] < MCP_DISCOVERY_DEADLINE_S + 0.5  # greeted without them
        late = updates[-1]["session"]
        assert [t["name"] for t in late["tools"]] == ["end_call", "check_stock"], late
        assert set(late) <= {"type", "tools", "tool_choice"}  # only the tools: the voice is not touched
