"""What callers keyed and said, their call's instructions and metadata, and what tools were given
stay out of the logs (README: Logs): one real outbound call over real sockets, logs captured at INFO."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from urllib.parse import urlsplit

import httpx
from conftest import running_app
from fake_twilio import ACCOUNT_SID, AUTH_TOKEN, running_fake_twilio
from helpers import stream_parameters, stream_url, twilio_post, ulaw_silence, ulaw_tone, wait_until

from telephony.core.function_tools import FunctionTool
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.ops import logs
from telephony.settings import Settings

TOKEN = "calls-api-token-xyz"
CARD = "4111 1111 1111 1111"  # fails the tool's pattern: jsonschema's message would quote it
DIGITS = "*0#9*"
REASON = "reason-zebra-quokka"
METADATA = "meta-okapi-77"
INSTRUCTIONS = "Remind them of the narwhal appointment."
TO = "+15552223333"
LOOKUP = FunctionTool("http", "lookup_order", "Find an order",
                      {"type": "object", "properties": {"order": {"type": "string", "pattern": "^[0-9]{1,8}$"}},
                       "required": ["order"]}, "https://example.com/hooks/lookup_order", 5.0)


def capture_logs(buf: io.StringIO):
    """The CLI's logging (logs.configure, uvicorn's loggers through ours) at INFO, into ``buf``."""
    saved = (list(logging.getLogger().handlers), logging.getLogger().level)
    handler = logs.configure("INFO", "json", stream=buf)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error"):  # as under log_config=None
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [], True
        logger.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # this test's own client: not the service's logs
    return handler, saved


async def test_no_caller_data_in_logs_at_info(profile):
    profile = replace(profile, function_tools=(LOOKUP,))
    script = Script(response_ms=400, speed=5.0, tool_calls={
        1: ("lookup_order", json.dumps({"order": f"my card is {CARD}"})),
        2: ("end_call", json.dumps({"reason": REASON}))})
    buf = io.StringIO()
    async with running_fake_twilio() as fake, ScriptedRealtimeServer(script) as server, \
            running_app(Settings(realtime_url=server.url, realtime_api_key="sk-x", twilio_account_sid=ACCOUNT_SID,
                                 twilio_auth_token=AUTH_TOKEN, twilio_from_number="+15550001111",
                                 twilio_api_base_url=fake.base_url, calls_api_token=TOKEN,
                                 tools_secret="t" * 32, public_url="https://bridge.example.com"),
                        profile) as (app, host):
        handler, saved = capture_logs(buf)
        try:
            async with httpx.AsyncClient() as client:
                r = await client.post(f"http://{host}/calls", headers={"Authorization": f"Bearer {TOKEN}"},
                                      json={"to": TO, "instructions": INSTRUCTIONS, "metadata": {"id": METADATA}})
            assert r.status_code == 201, r.text
            url = urlsplit(fake.created[0]["Url"])
            sid = "CA" + "7" * 32
            answer = await twilio_post(host, f"{url.path}?{url.query}", {"CallSid": sid}, AUTH_TOKEN)
            assert answer.status_code == 200
            dtmf = [(0.3 + 0.1 * i, json.dumps({"event": "dtmf", "streamSid": "x", "sequenceNumber": "9",
                                                "dtmf": {"track": "inbound_track", "digit": d}}))
                    for i, d in enumerate(DIGITS)]
            sim = TwilioCallSimulator(stream_url(app, host, sid), call_sid=sid,
                                      custom_parameters=stream_parameters(answer.text), duration_s=5.0,
                                      caller_audio=ulaw_silence(2.0) + ulaw_tone(500, 0.4), extra_messages=dtmf)
            await sim.run()
            await wait_until(lambda: fake.updates, "end_call's hang-up")
        finally:
            root = logging.getLogger()
            root.removeHandler(handler)
            for h in saved[0]:
                root.addHandler(h)
            root.setLevel(saved[1])
    (conn,) = server.connections
    outputs = [e["item"]["output"] for e in conn.of_type("conversation.item.create")
               if e["item"]["type"] == "function_call_output"]
    assert CARD in outputs[0] and len(outputs) == 2  # the model did get the tool's refusal
    assert any(DIGITS in e["item"]["content"][0]["text"] for e in conn.of_type("conversation.item.create")
               if e["item"]["type"] == "message")
    text = buf.getvalue()
    assert "dtmf" in text and "lookup_order" in text and "POST /twilio/outbound" in text  # the logs ran
    for secret in (DIGITS, "4111 1111", REASON, METADATA, "narwhal", TO[2:]):
        assert secret not in text, (secret, [line for line in text.splitlines() if secret in line])
