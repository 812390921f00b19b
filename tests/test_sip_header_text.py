"""Issue 27, SIP headers: names matched exactly over ASCII (no Unicode case folding), values only
printable characters, and text logs escape format characters (bidi overrides) too."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import replace

from conftest import running_app

from telephony.core.sip import select_headers
from telephony.offline.openai_sip_peer import OpenAISipPeer
from telephony.offline.scripted_realtime import Script, TonePersona
from telephony.ops import logs
from telephony.settings import Settings
from telephony.wire import openai_sip

KELVIN = "X-Tic\u212aet-Id"  # KELVIN SIGN: str.lower() makes it 'x-ticket-id'
HIDDEN = ["\u202e", "\u200b", "\u2028", "\u2029", "\x85", "\U000e0041", "\ue000", "\u0378", "\x00", "\n"]


def test_a_name_that_folds_to_a_listed_one_outside_ascii_is_not_that_header():
    assert select_headers(["X-Ticket-Id"], [(KELVIN, "forged"), ("x-ticket-id", "real")]) == {"X-Ticket-Id": "real"}
    assert openai_sip.header([{"name": "\u212aey", "value": "forged"}, {"name": "KEY", "value": "real"}], "key") \
        == "real"


def test_values_keep_only_printable_characters():
    value = "ab".join(HIDDEN) + "café 123"
    (kept,) = select_headers(["X-A"], [("X-A", value)]).values()
    assert kept.isprintable() and "café 123" in kept
    assert all(c not in kept for c in HIDDEN)


def test_text_logs_escape_format_characters():
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.TextFormatter())
    record = logging.LogRecord("t", logging.WARNING, "", 0, "mark %s ignored", ("a\u202eb\u2066c\u200bd",), None)
    line = handler.format(record)
    assert "\u202e" not in line and "\u2066" not in line and "\u200b" not in line
    assert "\\u202e" in line


async def test_a_kelvin_spelled_header_does_not_reach_the_model_over_the_sip_route(profile):
    profile = replace(profile, sip_headers=("X-Ticket-Id",))
    headers = [{"name": "From", "value": "<sip:+15550100001@pstn.example.com>"},
               {"name": "To", "value": "<sip:+15550100002@sip.api.openai.com>"},
               {"name": KELVIN, "value": "forged\u202e-ticket"}, {"name": "X-Ticket-Id", "value": "T-1\u200b7"}]
    script = Script(response_ms=300, speed=5.0)
    async with OpenAISipPeer(TonePersona(script), script.engine_config("ga"), listen_s=0.5) as peer, \
            running_app(Settings(openai_webhook_secret=peer.secret, openai_base_url=peer.base_url,
                                 openai_api_key=peer.api_key, twilio_validate_signatures=False),
                        profile) as (app, host):
        call = await peer.ring(f"http://{host}/openai/sip", headers)
        await asyncio.wait_for(call.ended.wait(), 15)
    instructions = call.accepted["instructions"]
    assert "- X-Ticket-Id: T-17" in instructions and "forged" not in instructions
