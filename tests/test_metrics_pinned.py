"""The metrics the audit found never asserted: Realtime errors, and calls that end abnormally or
never start, counted exactly, over real sockets."""

from __future__ import annotations

import httpx
import websockets
from conftest import running_app
from helpers import simulated_call, stream_url, ulaw_silence, wait_until
from test_bad_input import closed, delta, settings_for
from test_operations import samples

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer


async def metrics(host: str) -> dict:
    async with httpx.AsyncClient() as client:
        return samples((await client.get(f"http://{host}/metrics")).text)


async def test_realtime_errors_and_abnormal_and_unstarted_calls_are_counted():
    benign = delta("error", error={"type": "invalid_request_error", "code": "response_cancel_not_active",
                                   "message": "no response to cancel", "event_id": None})
    fatal = delta("error", error={"type": "server_error", "code": None, "message": "The server broke",
                                  "event_id": None})
    script = Script(respond_to_turns=False, inject=((5, benign), (10, fatal)))
    async with ScriptedRealtimeServer(script) as server, running_app(settings_for(server)) as (app, host):
        result = await simulated_call(app, host, caller_audio=ulaw_silence(3.0), hang_up=False).run()
        await closed(server)
        assert result.closed_by_bridge_at is not None
        async with websockets.connect(stream_url(app, host, "CA" + "3" * 32)) as ws:  # gone before start
            await ws.close()
        # A stream is a call only once its start is verified: one gone before start is refused.
        refused = ("telephony_calls_total", (("outcome", "refused"),))

        async def counted() -> bool:
            return refused in await metrics(host)

        await wait_until(counted, "the unstarted stream to be counted", timeout=5.0)
        m = await metrics(host)
    assert m[("telephony_realtime_errors_total", (("code", "response_cancel_not_active"),))] == 1
    assert m[("telephony_realtime_errors_total", (("code", "server_error"),))] == 1
    assert m[("telephony_calls_total", (("outcome", "abnormal"),))] == 1
    assert m[refused] == 1
    assert ("telephony_calls_total", (("outcome", "no_start"),)) not in m
    assert ("telephony_calls_total", (("outcome", "normal"),)) not in m
    assert m[("telephony_active_calls", ())] == 0
