"""Every wire parser turns any JSON it is given into an event or its own protocol error: values of
every JSON type in every field of every message it reads (issue 27: a ``start`` whose ``tracks``
was a number raised TypeError out of admission, a traceback reachable without credentials)."""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Iterator

import pytest

from telephony.wire import live, openai_sip, realtime_beta, realtime_ga
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

VALUES = [0, -1, 2 ** 63 - 1, True, False, 1.5, 1e300, None, "", "x", "²", "9" * 5000, [], [1, "a"], {},
          {"a": {"b": 1}}]

TWILIO = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"],
        "customParameters": {"call_sid": "CA1", "token": "v2.1.x"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}},
    {"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": "1", "timestamp": "5",
                                                     "payload": "/w=="}},
    {"event": "mark", "streamSid": "MZ1", "mark": {"name": "1"}},
    {"event": "dtmf", "streamSid": "MZ1", "dtmf": {"track": "inbound_track", "digit": "4"}},
    {"event": "stop", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}},
]

_RESPONSE = {"id": "resp_1", "status": "completed", "usage": {"total_tokens": 1}}
_ITEM = {"id": "item_1", "type": "function_call", "name": "end_call", "call_id": "c1"}
REALTIME = [
    {"type": "session.created", "session": {"id": "s"}},
    {"type": "session.updated", "session": {}},
    {"type": "input_audio_buffer.speech_started", "item_id": "i", "audio_start_ms": 5},
    {"type": "input_audio_buffer.speech_stopped", "item_id": "i", "audio_end_ms": 5},
    {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i", "transcript": "hi"},
    {"type": "response.created", "response": _RESPONSE},
    {"type": "response.audio.delta", "response_id": "r", "item_id": "i", "delta": "AAAA"},
    {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": "AAAA"},
    {"type": "response.audio.done", "response_id": "r", "item_id": "i"},
    {"type": "response.output_audio_transcript.done", "response_id": "r", "item_id": "i", "transcript": "t"},
    {"type": "response.audio_transcript.delta", "response_id": "r", "item_id": "i", "delta": "t"},
    {"type": "response.function_call_arguments.done", "response_id": "r", "item_id": "i", "call_id": "c",
     "name": "end_call", "arguments": "{}"},
    {"type": "response.done", "response": _RESPONSE},
    {"type": "conversation.item.truncated", "item_id": "i", "audio_end_ms": 5},
    {"type": "response.output_item.added", "response_id": "r", "item": _ITEM},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "c", "message": "m", "event_id": "e"}},
    {"type": "rate_limits.updated", "rate_limits": []},
    # Live and the SIP sideband's own events
    {"type": "session.output_audio.delta", "delta": "AAAA"},
    {"type": "session.started"},
    {"type": "response.event", "event": {"type": "response.output_item.done", "response_id": "r", "item": _ITEM}},
    {"type": "session.closed", "reason": "r", "usage": {"a": 1}},
    {"type": "output_audio_buffer.started", "response_id": "r"},
    {"type": "output_audio_buffer.cleared", "response_id": "r"},
    {"type": "input_audio_buffer.dtmf_event_received", "event": "4", "received_at": 1},
]

PARSERS: list[tuple[str, Callable[[str], Any], type[Exception], list[dict]]] = [
    ("twilio", tw.parse, tw.TwilioProtocolError, TWILIO),
    ("realtime_beta", realtime_beta.decode, rt.RealtimeProtocolError, REALTIME),
    ("realtime_ga", realtime_ga.decode, rt.RealtimeProtocolError, REALTIME),
    ("live", live.decode, rt.RealtimeProtocolError, REALTIME),
    ("openai_sip", openai_sip.decode, rt.RealtimeProtocolError, REALTIME),
]


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield path + (key,)
            yield from _paths(child, path + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield path + (i,)
            yield from _paths(child, path + (i,))


def _with(message: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(message)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return out


def mutants(messages: list[dict]) -> Iterator[str]:
    for value in VALUES:
        yield json.dumps(value)  # the whole message
    for message in messages:
        yield json.dumps(message)
        for path in _paths(message):
            if path == ("event",) or path == ("type",):  # keep the kind, else only the top branch runs
                continue
            for value in VALUES:
                yield json.dumps(_with(message, path, value))


@pytest.mark.parametrize("name,parse,own_error,messages", PARSERS, ids=[p[0] for p in PARSERS])
def test_every_json_type_in_every_field_is_an_event_or_the_parsers_own_error(name, parse, own_error, messages):
    count = 0
    for text in mutants(messages):
        count += 1
        try:
            parse(text)
        except own_error:
            pass
        except Exception as exc:  # noqa: BLE001 - what this test is about
            pytest.fail(f"{name}: {type(exc).__name__}: {exc} on {text[:200]}")
    assert count > 100


@pytest.mark.parametrize("tracks", [0, True, 1.5, [1], {"a": 1}, [None]])
def test_a_start_with_mistyped_tracks_is_a_bad_start(tracks):
    message = _with(TWILIO[1], ("start", "tracks"), tracks)
    with pytest.raises(tw.BadStart):
        tw.parse(json.dumps(message))


@pytest.mark.parametrize("digit", ["", "44", "4" * 60000, "x", "²"])
def test_a_dtmf_digit_is_one_keypad_key(digit):
    with pytest.raises(tw.TwilioProtocolError) as caught:
        tw.parse(json.dumps(_with(TWILIO[4], ("dtmf", "digit"), digit)))
    assert digit not in str(caught.value) or not digit  # the error never quotes what was pressed
