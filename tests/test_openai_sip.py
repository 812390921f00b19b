"""OpenAI's SIP route through real sockets: the service under uvicorn, OpenAI's side played by
the offline peer (signed webhooks, the calls REST API and the sideband websocket on loopback),
the scripted tone persona deciding what the agent says and which tools it calls."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import httpx
import pytest
from conftest import running_app
from helpers import ulaw_silence, ulaw_tone, validate_event, wait_until
from openai.types.realtime import RealtimeSessionCreateRequest
from prometheus_client.parser import text_string_to_metric_families

from telephony.offline.openai_sip_peer import OpenAISipPeer, PeerCall, incoming_call_event, sign_webhook
from telephony.offline.scripted_realtime import Script, TonePersona
from telephony.ops.records import read_records, record_path
from telephony.settings import Settings
from telephony.wire import openai_sip as wire

CALLER = ulaw_silence(0.9) + ulaw_tone(500, 0.5)
SIP_HEADERS = [{"name": "From", "value": '"Ann" <sip:+15550100001@pstn.example.com>;tag=9'},
               {"name": "To", "value": "<sip:+15550100002@sip.api.openai.com;user=phone>"},
               {"name": "X-Customer-Id", "value": "cust-42"},
               {"name": "X-Internal-Trunk", "value": "trunk-7"}]


def peer_for(script: Script, **kw) -> OpenAISipPeer:
    return OpenAISipPeer(TonePersona(script), script.engine_config("ga"), **kw)


def app_settings(peer: OpenAISipPeer, **kw) -> Settings:
    """OpenAI's key for OpenAI (the peer); the Twilio routes are not what these tests are about."""
    return Settings(**{"openai_webhook_secret": peer.secret, "openai_base_url": peer.base_url,
                       "openai_api_key": peer.api_key, "twilio_validate_signatures": False, **kw})


async def ring_and_wait(peer: OpenAISipPeer, host: str, timeout: float = 15.0, **kw) -> PeerCall:
    call = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS, **kw)
    await asyncio.wait_for(call.ended.wait(), timeout)
    return call


def tool_response(call: PeerCall) -> str:
    """The id of the response that called a tool."""
    return next(e["response"]["id"] for e in call.sent if e["type"] == "response.done"
                and any(o.get("type") == "function_call" for o in e["response"]["output"]))


def stopped_at(call: PeerCall, response_id: str) -> float:
    """When the line reported that response's audio stopped playing (fails if it never did)."""
    (t,) = [t for t, kind, rid in call.timeline if kind == "output_audio_buffer.stopped" and rid == response_id]
    return t


async def until(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def test_accepted_call_runs_over_the_sideband_and_hangs_up_after_the_goodbye(profile, tmp_path):
    """Greeting, a caller turn, then a 1.5 s goodbye that calls end_call: the hang-up comes only
    once the line reported the goodbye stopped playing."""
    profile = replace(profile, sip_headers=("X-Customer-Id",))
    script = Script(response_ms=600, speed=5.0, response_lengths={1: 1500},
                    tool_calls={1: ("end_call", '{"reason": "done"}')})
    async with peer_for(script, caller_audio=CALLER, listen_s=6.0) as peer, \
            running_app(app_settings(peer, call_records_dir=tmp_path), profile) as (app, host):
        call = await ring_and_wait(peer, host)
        await until(lambda: not app.state.calls._calls)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://{host}/metrics")).text

    assert call.webhook_status == 200 and call.accepts == 1 and call.rejected is None
    # The accept carried the profile's session, by the openai package's own model of it.
    session = call.accepted
    RealtimeSessionCreateRequest.model_validate(session)
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
    assert session["instructions"].startswith(profile.instructions)
    assert "- X-Customer-Id: cust-42" in session["instructions"] and "trunk-7" not in session["instructions"]
    assert session["audio"]["output"]["voice"] == profile.voice
    assert session["audio"]["input"]["transcription"]["model"] == profile.transcription_model
    assert "format" not in session["audio"]["input"] and "format" not in session["audio"]["output"]
    assert {t["name"] for t in session["tools"]} == {"end_call"}
    # The sideband: our key, the greeting first, valid GA client events only, no session.update.
    assert call.sideband_headers["authorization"] == f"Bearer {peer.api_key}"
    for event in call.received:
        validate_event(event, "ga", "client")
    assert call.received[0]["type"] == "response.create"
    assert not call.of_type("session.update") and not call.of_type("input_audio_buffer.append")
    (output,) = [e for e in call.of_type("conversation.item.create") if e["item"]["type"] == "function_call_output"]
    assert json.loads(output["item"]["output"])["ok"] is True
    # Hang-up after the goodbye stopped playing, and soon after.
    stopped = stopped_at(call, tool_response(call))
    assert call.hung_up_at is not None and stopped <= call.hung_up_at <= stopped + 0.5
    assert call.end_reason == "hung up by the service"
    # Call record, transcripts and metrics labelled by route.
    records = read_records(record_path(tmp_path, call.call_id))
    kinds = [r["kind"] for r in records]
    start = records[kinds.index("start")]
    assert start["route"] == "openai_sip" and start["parameters"]["from"] == "sip:+15550100001@pstn.example.com"
    assert start["parameters"]["to"] == "sip:+15550100002@sip.api.openai.com;user=phone"
    assert any(r["kind"] == "transcript" and r["speaker"] == "caller" for r in records)
    assert any(r["kind"] == "transcript" and r["speaker"] == "agent" for r in records)
    assert records[kinds.index("end")]["abnormal"] is False
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert m[("telephony_active_calls_by_route", (("route", "openai_sip"),))] == 0
    assert m[("telephony_calls_total", (("outcome", "normal"),))] == 1


@pytest.mark.parametrize("target,refer_to", [("sip:desk@pbx.example.com", "sip:desk@pbx.example.com"),
                                             ("+15557778888", "tel:+15557778888")])
async def test_transfer_refers_the_call_to_the_allowed_target(profile, target, refer_to):
    profile = replace(profile, transfer_targets={"desk": target})
    script = Script(response_ms=600, speed=5.0, tool_calls={1: ("transfer_call", '{"destination": "desk"}')})
    async with peer_for(script, caller_audio=CALLER, listen_s=5.0) as peer, \
            running_app(app_settings(peer), profile) as (app, host):
        call = await ring_and_wait(peer, host)
    assert call.referred_to == [refer_to] and call.hung_up_at is None
    # Referred once the words of the response that asked for it had been heard.
    assert stopped_at(call, tool_response(call)) <= call.when("refer")[0]


async def test_transfer_to_a_target_not_allowed_is_refused(profile):
    profile = replace(profile, transfer_targets={"desk": "sip:desk@pbx.example.com"})
    script = Script(response_ms=600, speed=5.0,
                    tool_calls={1: ("transfer_call", '{"destination": "sip:boss@elsewhere.example.com"}')})
    async with peer_for(script, caller_audio=CALLER, listen_s=2.0) as peer, \
            running_app(app_settings(peer), profile) as (app, host):
        call = await ring_and_wait(peer, host)
    assert call.referred_to == []
    (output,) = [e for e in call.of_type("conversation.item.create") if e["item"]["type"] == "function_call_output"]
    assert "cannot transfer" in json.loads(output["item"]["output"])["error"]


async def test_keypad_digits_reach_the_model_as_one_message(profile):
    script = Script(response_ms=300, speed=5.0, respond_to_turns=False)
    async with peer_for(script, listen_s=3.0, dtmf=((0.8, "4"), (1.0, "2"), (1.2, "#"))) as peer, \
            running_app(app_settings(peer), profile) as (app, host):
        call = await ring_and_wait(peer, host)
    texts = [c["text"] for e in call.of_type("conversation.item.create") if e["item"]["type"] == "message"
             for c in e["item"]["content"]]
    assert texts == ["The caller pressed 42# on the keypad."]
    # The caller hung up: OpenAI closed the sideband normally, which is the call's end, not a drop.
    assert (call.sidebands, call.sidebands_refused, call.hung_up_at) == (1, 0, None)


# --- Webhook verification, duplicates, rejection ---


async def post(host: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(f"http://{host}/openai/sip", content=body, headers=headers)


@pytest.mark.parametrize("case", ["forged", "stale", "unsigned", "tampered"])
async def test_bad_signatures_are_refused_and_nothing_is_accepted(profile, case):
    async with peer_for(Script()) as peer, running_app(app_settings(peer), profile) as (app, host):
        body = incoming_call_event("rtc_bad", SIP_HEADERS)
        now = int(time.time())
        secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY" if case == "forged" else peer.secret
        headers = sign_webhook(secret, body, "wh_1", now - 600 if case == "stale" else now)
        if case == "unsigned":
            headers = {"content-type": "application/json"}
        if case == "tampered":
            body = body.replace(b"rtc_bad", b"rtc_bae")
        r = await post(host, body, headers)
    assert r.status_code == 400, r.text
    assert ("too old" in r.text) if case == "stale" else True
    assert peer.secret not in r.text
    assert all(c.accepts == 0 for c in peer.calls.values())


async def test_a_redelivered_webhook_is_accepted_once(profile):
    script = Script(response_ms=300, speed=5.0)
    async with peer_for(script, listen_s=1.5) as peer, running_app(app_settings(peer), profile) as (app, host):
        first = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS, "rtc_dup", event_id="evt_1")
        again = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS, "rtc_dup", event_id="evt_1")  # replayed
        other = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS, "rtc_dup", event_id="evt_2")
        await asyncio.wait_for(first.ended.wait(), 10)
    assert first is again is other
    assert (first.webhook_status, first.accepts) == (200, 1)


async def test_calls_are_rejected_busy_while_draining_or_at_the_limit(profile):
    script = Script(response_ms=300, speed=5.0)
    async with peer_for(script, listen_s=3.0) as peer, \
            running_app(app_settings(peer, max_concurrent_calls=1), profile) as (app, host):
        url = f"http://{host}/openai/sip"
        first = await peer.ring(url, SIP_HEADERS)
        await until(lambda: len(app.state.calls) == 1)
        over = await peer.ring(url, SIP_HEADERS)
        app.state.calls.draining = True
        draining = await peer.ring(url, SIP_HEADERS)
        first_line = peer._lines[first.call_id]
        first_line.end("test over")
    assert first.accepts == 1
    for call in (over, draining):
        assert call.rejected == wire.BUSY_HERE and call.accepts == 0 and call.webhook_status == 200


async def test_the_route_is_off_without_a_secret(profile):
    async with running_app(Settings(twilio_validate_signatures=False), profile) as (app, host):
        r = await post(host, b"{}", {"content-type": "application/json"})
    assert r.status_code == 503 and "OPENAI_WEBHOOK_SECRET" in r.text


def test_sideband_url_follows_the_base_url():
    assert wire.sideband_url("https://api.openai.com/v1", "rtc_1") == "wss://api.openai.com/v1/realtime?call_id=rtc_1"
    assert wire.sideband_url("http://127.0.0.1:9/v1/", "rtc 2") == "ws://127.0.0.1:9/v1/realtime?call_id=rtc+2"
    assert wire.address('"Ann" <sip:+1555@x.example.com>;tag=1') == "sip:+1555@x.example.com"
    assert wire.address("sip:bob@x.example.com;tag=2") == "sip:bob@x.example.com"
    assert wire.header(SIP_HEADERS, "to") == SIP_HEADERS[1]["value"]


def test_the_peer_signs_as_the_openai_package_verifies():
    import openai

    from telephony.offline.openai_sip_peer import new_webhook_secret

    secret, body = new_webhook_secret(), incoming_call_event("rtc_1", SIP_HEADERS)
    client = openai.OpenAI(api_key="sk-x", webhook_secret=secret)
    event = client.webhooks.unwrap(body, sign_webhook(secret, body, "wh_1", int(time.time())))
    assert event.type == "realtime.call.incoming" and event.data.call_id == "rtc_1"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, sign_webhook(new_webhook_secret(), body, "wh_1", int(time.time())))


async def test_an_oversized_webhook_gets_413_before_its_body_is_read(profile):
    """Anyone can POST here before the signature is checked: a body announced as 1 GB is answered
    from its header, and nothing of it is buffered (the same cap as Twilio's webhooks)."""
    async with peer_for(Script()) as peer, running_app(app_settings(peer), profile) as (app, host):
        address, port = host.split(":")
        reader, writer = await asyncio.open_connection(address, int(port))
        writer.write(f"POST /openai/sip HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {10 ** 9}\r\n\r\n{{".encode())
        started = time.monotonic()
        status = await asyncio.wait_for(reader.readline(), 2.0)
        took = time.monotonic() - started
        writer.close()
    assert status.startswith(b"HTTP/1.1 413"), status
    assert took < 1.0
    assert all(c.accepts == 0 for c in peer.calls.values())


@pytest.mark.parametrize("body,status,reason", [
    (b"not json", 400, "malformed webhook"),
    (json.dumps({"id": "evt_1", "type": "realtime.call.incoming", "created_at": 1, "data": {}}).encode(),
     400, "malformed realtime.call.incoming"),
    (json.dumps({"id": "evt_2", "type": "batch.completed", "created_at": 1, "data": {"id": "b"}}).encode(),
     200, ""),
])
async def test_signed_but_unusable_webhooks(profile, body, status, reason):
    async with peer_for(Script()) as peer, running_app(app_settings(peer), profile) as (app, host):
        r = await post(host, body, sign_webhook(peer.secret, body, "wh_x", int(time.time())))
    assert r.status_code == status and reason in r.text
    assert not app.state.calls._calls


async def test_draining_hangs_up_sip_calls_still_going_after_the_grace(profile):
    script = Script(response_ms=300, speed=5.0)
    # No Redis and no state directory: no one could take the call on (tests/test_sip_handover.py).
    async with peer_for(script, listen_s=10.0) as peer, \
            running_app(app_settings(peer, state_dir=None), profile) as (app, host):
        call = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await until(lambda: len(app.state.calls) == 1 and call.received)
        await app.state.calls.drain(0.2)
        await asyncio.wait_for(call.ended.wait(), 5)
    assert call.hung_up_at is not None and call.end_reason == "hung up by the service"
    assert not app.state.calls._calls


async def test_the_profile_is_chosen_by_the_sip_to_header(profile):
    """The route asks for the profile answering the To header's URI; none answering is a 404."""
    from conftest import serve_app
    from starlette.applications import Starlette

    from telephony.ops.metrics import Metrics
    from telephony.serve.limits import CallRegistry
    from telephony.serve.openai_sip import OpenAISipRoute
    from telephony.serve.transcripts import TranscriptHub

    asked: list[str] = []

    def choose(to: str):
        asked.append(to)
        return replace(profile, greeting="Sales, hello.") if to.startswith("sip:+15550100002@") else None

    script = Script(response_ms=300, speed=5.0)
    async with peer_for(script, listen_s=1.0) as peer:
        route = OpenAISipRoute(app_settings(peer), choose, CallRegistry(), Metrics(), TranscriptHub())
        async with serve_app(Starlette(routes=route.routes())) as host:
            known = await ring_and_wait(peer, host)
            other = [dict(h) for h in SIP_HEADERS]
            other[1]["value"] = "<sip:+15559990000@sip.api.openai.com>"
            unknown = await peer.ring(f"http://{host}/openai/sip", other)
        await route.close()
    assert asked == ["sip:+15550100002@sip.api.openai.com;user=phone", "sip:+15559990000@sip.api.openai.com"]
    assert "Sales, hello." in known.received[0]["response"]["instructions"]
    assert unknown.rejected == 404 and unknown.accepts == 0


async def test_a_failed_accept_answers_502_and_the_redelivery_is_accepted(profile):
    script = Script(response_ms=300, speed=5.0)
    # The openai client tries twice (max_retries=1): both fail, so the webhook fails.
    async with peer_for(script, listen_s=1.0, failing_accepts=2) as peer, \
            running_app(app_settings(peer), profile) as (app, host):
        first = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS, "rtc_retry")
        status_first = first.webhook_status
        again = await ring_and_wait(peer, host, call_id="rtc_retry")
    assert status_first == 502 and again.webhook_status == 200 and again.accepts == 1
    assert again.received and again.received[0]["type"] == "response.create"


async def test_a_call_whose_sideband_cannot_open_is_hung_up(profile, tmp_path):
    async with peer_for(Script(), listen_s=5.0, refuse_sideband=True) as peer, \
            running_app(app_settings(peer, call_records_dir=tmp_path), profile) as (app, host):
        call = await ring_and_wait(peer, host)
        await until(lambda: not app.state.calls._calls)
    assert call.accepts == 1 and call.hung_up_at is not None and not call.received
    end = [r for r in read_records(record_path(tmp_path, call.call_id)) if r["kind"] == "end"]
    assert end and end[0]["abnormal"] is True and "sideband connect failed" in end[0]["reason"]


async def test_bad_sideband_messages_are_logged_with_the_call_id_and_the_call_goes_on(profile, caplog):
    script = Script(response_ms=600, speed=5.0, tool_calls={1: ("end_call", "{}")})
    async with peer_for(script, caller_audio=CALLER, listen_s=5.0, inject=("not json", '{"no": "type"}')) as peer, \
            running_app(app_settings(peer), profile) as (app, host):
        with caplog.at_level("WARNING", logger="telephony.openai_sip"):
            call = await ring_and_wait(peer, host)
    warnings = [r.getMessage() for r in caplog.records if "bad sideband message" in r.getMessage()]
    assert len(warnings) == 2 and all(call.call_id in w for w in warnings)
    assert call.hung_up_at is not None  # the call went on to its end_call


async def test_transcripts_reach_the_sse_feed_and_the_webhook(profile):
    from conftest import serve_app
    from test_transcription import WebhookReceiver

    receiver = WebhookReceiver()
    script = Script(response_ms=600, speed=5.0)
    async with serve_app(receiver.app()) as hook_host, peer_for(script, caller_audio=CALLER, listen_s=2.5) as peer, \
            running_app(app_settings(peer, calls_api_token="tok", transcript_webhook_url=f"http://{hook_host}/hook"),
                        profile) as (app, host):
        call = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await until(lambda: app.state.transcripts.active(call.call_id))
        async with httpx.AsyncClient(timeout=15) as client:
            feed = await client.get(f"http://{host}/calls/{call.call_id}/transcript",
                                    headers={"Authorization": "Bearer tok"})
        await asyncio.wait_for(call.ended.wait(), 10)
        await app.state.transcripts.drain(5.0)
    fed = [json.loads(line[len("data: "):]) for line in feed.text.splitlines()
           if line.startswith("data: ") and line != "data: {}"]
    speakers = [t["speaker"] for t in fed]
    assert "caller" in speakers and "agent" in speakers and feed.text.rstrip().endswith("data: {}")
    assert [t["speaker"] for t in receiver.received] == speakers


# --- Business tools: every kind runs on this route, through the same runner as a Twilio stream's ---


async def test_http_python_and_mcp_tools_run_and_answer_the_model(tmp_path):
    """The greeting calls the HTTP tool, the response about its answer the Python tool, the next
    one the MCP tool: each real output goes back to the model as its function's output."""
    import tool_functions
    from test_tools import HTTP_TOOL, PYTHON_TOOLS, SECRET, mcp_server, mcp_table, tool_server, write_profile

    from telephony.core.profile import load_profile

    tool_functions.calls.clear()
    script = Script(response_ms=300, speed=5.0, respond_to_turns=False, tool_calls={
        0: ("lookup_order", '{"order": "A-17"}'), 1: ("book_table", '{"day": "friday", "people": 2}'),
        2: ("check_stock", '{"item": "socks"}')})
    async with tool_server() as business, mcp_server() as (mcp_url, mcp_seen):
        book_table = "[[tools.python]]" + PYTHON_TOOLS.split("[[tools.python]]")[2]  # not its check_stock: MCP's
        profile = load_profile(write_profile(tmp_path / "agent.toml", HTTP_TOOL.format(url=business.url, timeout=5)
                                             + book_table + mcp_table(mcp_url)))
        async with peer_for(script, listen_s=8.0) as peer, \
                running_app(app_settings(peer, tools_secret=SECRET), profile) as (app, host):
            call = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
            await wait_until(lambda: len(function_outputs(call)) == 3, "three tool outputs")
            peer._lines[call.call_id].end("test over")
    for event in call.received:
        validate_event(event, "ga", "client")
    assert {t["name"] for t in call.accepted["tools"]} == {"end_call", "lookup_order", "book_table"}
    # The MCP server's allowed tool, listed once the call started, is offered on the sideband.
    (update,) = call.of_type("session.update")  # the tools alone: the voice cannot change once the agent spoke
    assert set(update["session"]) == {"type", "tools", "tool_choice"}
    assert {t["name"] for t in update["session"]["tools"]} == {"end_call", "lookup_order", "book_table",
                                                               "check_stock"}
    outputs = [json.loads(o["output"]) for o in function_outputs(call)]
    assert outputs == [{"status": "shipped", "eta": "Tuesday"}, {"booked": True, "day": "friday"},
                       {"item": "socks", "units": 7}]
    ((_, body),) = business.requests
    assert json.loads(body)["call"] == {"call_sid": call.call_id, "from": "sip:+15550100001@pstn.example.com",
                                        "to": "sip:+15550100002@sip.api.openai.com;user=phone",
                                        "direction": "inbound", "metadata": {}}
    ((name, context, _),) = tool_functions.calls
    assert name == "book_table" and context.call_sid == call.call_id
    assert mcp_seen and all(h.get("authorization") == "Bearer mcp-token" for h in mcp_seen)


def function_outputs(call: PeerCall) -> list[dict]:
    return [e["item"] for e in call.of_type("conversation.item.create") if e["item"]["type"] == "function_call_output"]


# --- Keys: OpenAI's key for OpenAI's endpoints, never the Realtime provider's ---

PROVIDER_KEY = "sk-opeai-provider-key"


async def test_only_openais_key_reaches_openai_when_the_provider_is_another(profile):
    """The default provider (OPE.AI) with both keys set: the accept, the sideband and the hang-up
    carry OPENAI_API_KEY; the provider's key is never sent to OpenAI."""
    script = Script(response_ms=600, speed=5.0, tool_calls={1: ("end_call", "{}")})
    async with peer_for(script, caller_audio=CALLER, listen_s=5.0) as peer, \
            running_app(app_settings(peer, realtime_api_key=PROVIDER_KEY), profile) as (app, host):
        call = await ring_and_wait(peer, host)
    assert call.accepts == 1 and call.hung_up_at is not None
    assert set(peer.authorizations) == {f"Bearer {peer.api_key}"} and len(peer.authorizations) >= 3
    assert not any(PROVIDER_KEY in a for a in peer.authorizations)


@pytest.mark.parametrize("realtime_url,keys,used", [
    ("wss://api.openai.com/v1/realtime", {"realtime_api_key": "sk-openai-realtime"}, "sk-openai-realtime"),
    ("wss://api.openai.com/v1/realtime", {"realtime_api_key": "sk-rt", "openai_api_key": "sk-oa"}, "sk-oa"),
    ("wss://eu.api.openai.com/v1/realtime", {"realtime_api_key": "sk-eu"}, "sk-eu"),
    ("wss://api.openai.com.example.net/v1/realtime", {"realtime_api_key": PROVIDER_KEY}, None),
    (None, {"openai_api_key": "sk-oa"}, "sk-oa"),
    (None, {"realtime_api_key": PROVIDER_KEY}, None),
    ("wss://my-resource.openai.azure.com/openai/realtime", {"realtime_api_key": PROVIDER_KEY}, None),
    (None, {}, None),
])
def test_the_route_takes_openais_key_or_refuses_to_start_naming_it(profile, realtime_url, keys, used):
    from telephony.serve.app import create_app
    from telephony.settings import SettingsError

    settings = Settings(openai_webhook_secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
                        twilio_validate_signatures=False, **({"realtime_url": realtime_url} if realtime_url else {}),
                        **keys)
    if used is not None:
        assert create_app(settings, profile).state.openai_sip.api_key == used
        return
    with pytest.raises(SettingsError, match="^OPENAI_API_KEY: ") as refused:
        create_app(settings, profile)
    assert PROVIDER_KEY not in str(refused.value)


# --- Several instances, bursts, and the calls list ---


async def test_a_webhook_delivered_to_two_instances_is_accepted_once(profile, redis_server):
    """Two instances sharing Redis both get the same signed webhook at once: one accept."""
    script = Script(response_ms=300, speed=5.0)
    async with peer_for(script, listen_s=1.5) as peer, \
            running_app(app_settings(peer, redis_url=redis_server.url), profile) as (_, one), \
            running_app(app_settings(peer, redis_url=redis_server.url), profile) as (_, two):
        body = incoming_call_event("rtc_twice", SIP_HEADERS, "evt_1")
        headers = sign_webhook(peer.secret, body, "wh_1", int(time.time()))
        peer.calls["rtc_twice"] = PeerCall("rtc_twice", SIP_HEADERS)
        answers = await asyncio.gather(post(one, body, headers), post(two, body, headers))
        call = peer.calls["rtc_twice"]
        await asyncio.wait_for(call.ended.wait(), 10)
    assert [a.status_code for a in answers] == [200, 200]
    assert call.accepts == 1 and call.sidebands == 1


async def test_a_burst_of_calls_never_overshoots_the_limit(profile):
    """Six webhooks at once against MAX_CONCURRENT_CALLS=2: two accepts, four rejected busy."""
    script = Script(response_ms=300, speed=5.0)
    async with peer_for(script, listen_s=3.0) as peer, \
            running_app(app_settings(peer, max_concurrent_calls=2), profile) as (app, host):
        calls = await asyncio.gather(*(peer.ring(f"http://{host}/openai/sip", SIP_HEADERS) for _ in range(6)))
        for call in calls:
            if call.accepts:
                peer._lines[call.call_id].end("test over")
    assert all(call.webhook_status == 200 for call in calls)
    assert sorted(call.accepts for call in calls) == [0, 0, 0, 0, 1, 1]
    assert [call.rejected for call in calls if not call.accepts] == [wire.BUSY_HERE] * 4


async def test_max_total_calls_counts_sip_calls(profile):
    script = Script(response_ms=300, speed=5.0)
    async with peer_for(script, listen_s=3.0) as peer, \
            running_app(app_settings(peer, max_total_calls=1), profile) as (app, host):
        first = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        second = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        peer._lines[first.call_id].end("test over")
    assert first.accepts == 1 and (second.accepts, second.rejected) == (0, wire.BUSY_HERE)


async def test_a_sip_call_is_listed_while_it_lasts_on_every_instance(profile, redis_server):
    script = Script(response_ms=300, speed=5.0)
    async with peer_for(script, listen_s=3.0) as peer, \
            running_app(app_settings(peer, redis_url=redis_server.url, calls_api_token="tok"), profile) as (_, one), \
            running_app(app_settings(peer, redis_url=redis_server.url, calls_api_token="tok"), profile) as (_, two):

        async def listed() -> list[dict]:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://{two}/calls", headers={"Authorization": "Bearer tok"})
            return r.json()["calls"]

        async def none_listed() -> bool:
            return not await listed()

        call = await peer.ring(f"http://{one}/openai/sip", SIP_HEADERS)
        await wait_until(listed, "the call listed on the other instance")
        (entry,) = await listed()
        await asyncio.wait_for(call.ended.wait(), 10)
        await wait_until(none_listed, "the call gone from the list")
    assert entry["call_sid"] == call.call_id and entry["route"] == "openai_sip"
    assert entry["from"] == "sip:+15550100001@pstn.example.com" and entry["direction"] == "inbound"


# --- A sideband that drops: reconnected once, else the call is hung up ---


async def test_a_dropped_sideband_is_reconnected_and_the_call_goes_on(profile, tmp_path):
    """The peer cuts the sideband (no close frame) after the greeting; the caller then speaks and
    the model calls end_call: the tool's output and the hang-up come through the second sideband."""
    script = Script(response_ms=600, speed=5.0, tool_calls={1: ("end_call", "{}")})
    caller = ulaw_silence(3.0) + ulaw_tone(500, 0.5)  # the caller speaks well after the drop
    async with peer_for(script, caller_audio=caller, listen_s=5.0) as peer, \
            running_app(app_settings(peer, call_records_dir=tmp_path), profile) as (app, host):
        call = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await wait_until(lambda: call.when("output_audio_buffer.stopped"), "the greeting heard")
        await peer.drop_sideband(call.call_id)
        await asyncio.wait_for(call.ended.wait(), 10)
        await until(lambda: not app.state.calls._calls)
    assert call.sidebands == 2 and not call.sidebands_refused
    (output,) = function_outputs(call)
    assert call.received_on[call.received.index(
        next(e for e in call.received if e.get("item") == output))] == 2
    assert call.end_reason == "hung up by the service" and call.hung_up_at is not None
    assert len(call.of_type("response.create")) == 1  # greeted once: the session went on
    records = read_records(record_path(tmp_path, call.call_id))
    (dropped,) = [r for r in records if r["kind"] == "realtime_dropped"]
    assert dropped["reason"] == "connection lost" and any(r["kind"] == "realtime_reconnected" for r in records)


async def test_a_sideband_that_cannot_be_reopened_hangs_the_call_up(profile, tmp_path):
    script = Script(response_ms=600, speed=5.0)
    async with peer_for(script, listen_s=10.0, refuse_reconnect=True) as peer, \
            running_app(app_settings(peer, call_records_dir=tmp_path), profile) as (app, host):
        call = await peer.ring(f"http://{host}/openai/sip", SIP_HEADERS)
        await wait_until(lambda: call.when("output_audio_buffer.stopped"), "the greeting heard")
        await peer.drop_sideband(call.call_id, code=1011)  # the server failed: not the call's end
        await asyncio.wait_for(call.ended.wait(), 10)
        await until(lambda: not app.state.calls._calls)
    assert (call.sidebands, call.sidebands_refused) == (1, 1)
    assert call.hung_up_at is not None and call.end_reason == "hung up by the service"
    end = [r for r in read_records(record_path(tmp_path, call.call_id)) if r["kind"] == "end"]
    assert end and end[0]["abnormal"] is True and "sideband connect failed" in end[0]["reason"]
