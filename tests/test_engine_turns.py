"""The local engine as the real service treats turn detection's create_response and
interrupt_response (beta and GA session shapes), a truncate of an item nobody heard, and item
deletion; on a fake clock, every event checked against the openai package's models."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import websockets
from helpers import validate_event
from test_local_engine import append, pcm_tone, types

from telephony.offline.local_engine import EngineConfig, RealtimeEngine, SpeakingPersona
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.voices import FormantVoice


class Driver:
    """Feeds an engine 20 ms frames on a fake clock, in either dialect."""

    def __init__(self, dialect: str = "beta", config: EngineConfig | None = None) -> None:
        self.dialect = dialect
        self.engine = RealtimeEngine(SpeakingPersona(FormantVoice()), config or EngineConfig(dialect=dialect))
        self.now = 0.0
        self.events: list[dict] = []
        self._take(self.engine.open(self.now))

    def _take(self, events: list[dict]) -> list[dict]:
        for event in events:
            validate_event(event, self.dialect, "server")
        self.events += events
        return events

    def send(self, event: dict) -> list[dict]:
        validate_event(event, self.dialect, "client")
        return self._take(self.engine.receive(json.dumps(event), self.now))

    def talk(self, audio: bytes, frame: int = 960) -> list[dict]:
        out = []
        for i in range(0, len(audio), frame):
            self.now += 0.02
            out += self._take(self.engine.advance(self.now))
            out += self._take(self.engine.receive(append(audio[i:i + frame]), self.now))
        return out

    def run_until(self, t: float) -> list[dict]:
        self.now = t
        return self._take(self.engine.advance(t))

    def set_turn_detection(self, **flags: bool) -> list[dict]:
        td = {"type": "server_vad", "silence_duration_ms": 400, **flags}
        if self.dialect == "ga":
            session = {"type": "realtime", "audio": {"input": {"turn_detection": td}}}
        else:
            session = {"turn_detection": td}
        return self.send({"type": "session.update", "session": session})


def session_turn_detection(event: dict, dialect: str) -> dict:
    session = event["session"]
    return session["audio"]["input"]["turn_detection"] if dialect == "ga" else session["turn_detection"]


DIALECTS = ["beta", "ga"]
AUDIO_DELTA = {"beta": "response.audio.delta", "ga": "response.output_audio.delta"}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_both_flags_default_to_true_and_are_echoed(dialect):
    d = Driver(dialect)
    td = session_turn_detection(d.events[0], dialect)
    assert td["create_response"] is True and td["interrupt_response"] is True
    updated = d.set_turn_detection(create_response=False, interrupt_response=False)
    td = session_turn_detection(updated[0], dialect)
    assert td["create_response"] is False and td["interrupt_response"] is False


@pytest.mark.parametrize("dialect", DIALECTS)
def test_create_response_false_leaves_the_answer_to_the_client(dialect):
    d = Driver(dialect)
    d.set_turn_detection(create_response=False)
    out = d.talk(pcm_tone(0.5) + bytes(48000))
    kinds = types(out)
    assert "input_audio_buffer.committed" in kinds and "response.created" not in kinds
    out += d.run_until(d.now + 10)
    assert "response.created" not in types(out)
    asked = d.send({"type": "response.create"})  # the client decides to answer
    assert types(asked)[0] == "response.created"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_interrupt_response_false_keeps_the_answer_streaming_over_caller_speech(dialect):
    d = Driver(dialect)
    d.set_turn_detection(interrupt_response=False)
    d.send({"type": "response.create"})
    d.run_until(0.1)
    out = d.talk(pcm_tone(0.4))
    kinds = types(out)
    assert "input_audio_buffer.speech_started" in kinds
    assert "response.done" not in kinds  # not cancelled
    assert kinds.index("input_audio_buffer.speech_started") < len(kinds) - 1 - kinds[::-1].index(AUDIO_DELTA[dialect])
    out += d.talk(bytes(48000)) + d.run_until(d.now + 30)
    done = next(e for e in out if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    # The turn that ended while the answer was still streaming got no second response.
    assert types(d.events).count("response.created") == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_interrupt_response_true_cancels_as_before(dialect):
    d = Driver(dialect)
    d.set_turn_detection()
    d.send({"type": "response.create"})
    d.run_until(0.1)
    out = d.talk(pcm_tone(0.2))
    done = next(e for e in out if e["type"] == "response.done")
    assert done["response"]["status_details"]["reason"] == "turn_detected"


@pytest.mark.parametrize("bad", [{"interrupt_response": "no"}, {"create_response": 0},
                                 {"type": "push_to_talk"}])
def test_a_bad_turn_detection_is_refused_with_a_clear_error(bad):
    d = Driver()
    td = {"type": "server_vad", **bad}
    out = d.engine.receive(json.dumps({"type": "session.update", "event_id": "evt_1",
                                       "session": {"turn_detection": td}}), 0)
    assert out[0]["type"] == "error" and out[0]["error"]["event_id"] == "evt_1"
    assert out[0]["error"]["code"] == "invalid_value"
    assert d.engine.session["turn_detection"]["interrupt_response"] is True  # nothing applied


def playing_item(d: Driver) -> str:
    d.send({"type": "response.create"})
    d.run_until(0.1)
    return next(e["item_id"] for e in d.events if e["type"] == AUDIO_DELTA[d.dialect])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_truncate_at_zero_is_refused_as_the_real_service_refuses_it(dialect):
    d = Driver(dialect)
    item = playing_item(d)
    out = d.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0,
                  "audio_end_ms": 0, "event_id": "evt_t0"})
    assert out[0]["type"] == "error"
    assert out[0]["error"] == {**out[0]["error"], "type": "invalid_request_error",
                               "code": "unsupported_content_type",
                               "message": "Only model output audio messages can be truncated",
                               "event_id": "evt_t0"}
    ok = d.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 20})
    assert ok[0]["type"] == "conversation.item.truncated"


def test_a_caller_item_cannot_be_truncated_either():
    d = Driver()
    d.set_turn_detection(create_response=False)
    out = d.talk(pcm_tone(0.5) + bytes(48000))
    user_item = next(e["item_id"] for e in out if e["type"] == "input_audio_buffer.committed")
    refused = d.send({"type": "conversation.item.truncate", "item_id": user_item, "content_index": 0,
                      "audio_end_ms": 100})
    assert refused[0]["error"]["code"] == "unsupported_content_type"


def test_a_lenient_engine_still_accepts_a_truncate_at_zero():
    d = Driver(config=EngineConfig(refuse_unplayed_truncate=False))
    item = playing_item(d)
    out = d.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 0})
    assert out[0]["type"] == "conversation.item.truncated"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_item_delete_removes_it_and_an_unknown_item_is_an_error(dialect):
    d = Driver(dialect)
    item = playing_item(d)
    d.run_until(30)  # the response completes
    out = d.send({"type": "conversation.item.delete", "item_id": item, "event_id": "evt_d1"})
    assert out == [{**out[0], "type": "conversation.item.deleted", "item_id": item}]
    again = d.send({"type": "conversation.item.delete", "item_id": item, "event_id": "evt_d2"})
    assert again[0]["type"] == "error" and again[0]["error"]["event_id"] == "evt_d2"
    assert again[0]["error"]["code"] == "item_not_found"
    gone = d.send({"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 20})
    assert gone[0]["error"]["code"] == "item_not_found"
    # The next item no longer follows the deleted one.
    created = d.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
    assert created[0]["previous_item_id"] != item


async def test_scripted_server_refuses_an_unplayed_truncate_and_deletes_over_a_real_socket():
    """What the bridge's tests talk to: a websocket, beta dialect, the session's own flags."""
    async with ScriptedRealtimeServer(Script(response_ms=2000)) as server, websockets.connect(server.url) as ws:
        async def until(kind: str) -> dict:
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if event["type"] == kind:
                    return event
        await until("session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"input_audio_format": "pcm16",
            "turn_detection": {"type": "server_vad", "interrupt_response": False, "create_response": False}}}))
        td = (await until("session.updated"))["session"]["turn_detection"]
        assert td["interrupt_response"] is False and td["create_response"] is False
        await ws.send(json.dumps({"type": "response.create"}))
        item = (await until("response.audio.delta"))["item_id"]
        loud = base64.b64encode(pcm_tone(0.3, amplitude=8000)).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": loud}))
        await until("input_audio_buffer.speech_started")
        await until("response.audio.delta")  # caller speech did not cancel it
        await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": item,
                                  "content_index": 0, "audio_end_ms": 0}))
        assert (await until("error"))["error"]["code"] == "unsupported_content_type"
        await ws.send(json.dumps({"type": "conversation.item.delete", "item_id": item}))
        assert (await until("conversation.item.deleted"))["item_id"] == item
