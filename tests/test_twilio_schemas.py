"""The Twilio schemas bite: what the bridge sends passes, what Twilio would refuse does not."""

from __future__ import annotations

import json

import pytest
from conftest import running_app
from helpers import simulated_call, ulaw_silence, ulaw_tone
from twilio_schemas import TwilioProtocolError, validate_to_twilio

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.simulator import TwilioCallSimulator
from telephony.settings import Settings
from telephony.wire import twilio as tw

SID = "MZ" + "a1" * 16


@pytest.mark.parametrize("message", [tw.SendMedia("//8A"), tw.SendMark("7"), tw.SendClear()])
def test_what_the_bridge_encodes_is_what_twilio_documents(message):
    validate_to_twilio(json.loads(tw.serialize(message, SID)), SID)


@pytest.mark.parametrize("message,why", [
    ({"event": "media", "streamSid": SID, "media": {"playload": "//8A"}}, "payload"),  # a typo Twilio refuses
    ({"event": "media", "streamSid": SID, "media": {"payload": "//8A", "track": "outbound"}}, "track"),
    ({"event": "media", "streamSid": SID, "media": {"payload": "not base64!"}}, "does not match"),
    ({"event": "media", "media": {"payload": "//8A"}}, "streamSid"),
    ({"event": "mark", "streamSid": SID, "mark": {}}, "name"),
    ({"event": "mark", "streamSid": SID, "mark": {"name": 7}}, "string"),
    ({"event": "clear", "streamSid": SID, "sequenceNumber": "3"}, "sequenceNumber"),
    ({"event": "stop", "streamSid": SID}, "not 'stop'"),
    ({"event": "clear", "streamSid": "MZ" + "b2" * 16}, "not " + SID),
])
def test_messages_twilio_would_refuse_are_caught(message, why):
    with pytest.raises(TwilioProtocolError, match=why):
        validate_to_twilio(message, SID)


async def test_a_simulated_call_fails_on_a_message_twilio_would_refuse(monkeypatch):
    """The check is on in every end-to-end test: a malformed message from the bridge ends run()."""
    original = tw.serialize
    monkeypatch.setattr(tw, "serialize", lambda message, sid: original(message, sid).replace(
        '"streamSid"', '"streamSID"'))
    async with ScriptedRealtimeServer(Script(response_ms=300, speed=5.0)) as server, \
            running_app(Settings(twilio_validate_signatures=False,
                                 realtime_url=server.url, realtime_api_key="sk-x")) as (app, host):
        sim = simulated_call(app, host, caller_audio=ulaw_silence(0.3) + ulaw_tone(500, 0.3), duration_s=1.5)
        assert sim.validate is validate_to_twilio
        with pytest.raises(TwilioProtocolError, match="streamSid"):
            await sim.run()


def test_the_simulator_checks_nothing_unless_asked():
    TwilioCallSimulator.default_validate = None  # conftest's monkeypatch restores it after the test
    assert TwilioCallSimulator("ws://127.0.0.1:9/").validate is None
