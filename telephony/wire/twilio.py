"""Twilio Media Streams wire format: JSON text frames in, typed events out, and back.

Parsing is strict about what the call needs and lenient about the rest: a message missing a
field the call relies on raises ``TwilioProtocolError`` with a reason the shell logs; the
call itself goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

import orjson


class TwilioProtocolError(ValueError):
    """A Media Streams message we cannot use; the text says why (never quoting the peer's values)."""


class BadStart(TwilioProtocolError):
    """A ``start`` we cannot use: the stream is refused (it names no call we could serve)."""


# Twilio's ``digit`` is one keypad key; anything else is not a keypress (and may be megabytes).
KEYPAD = frozenset("0123456789*#ABCD")


@dataclass(frozen=True)
class Connected:
    protocol: str = "Call"


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str = ""
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1
    carrier_call_id: str = ""  # the call's id at its carrier when it is not ``call_sid`` (wire/telnyx.py)


@dataclass(frozen=True)
class Media:
    payload: str  # base64 μ-law 8 kHz, as received
    timestamp_ms: int = 0
    track: str = "inbound"
    stream_sid: str = ""


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Stop:
    call_sid: str = ""


TwilioEvent = Union[Connected, Start, Media, Mark, Dtmf, Stop]


def _obj(msg: dict, key: str) -> dict:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise TwilioProtocolError(f"{msg.get('event')!r} message without a {key!r} object")
    return value


def _str(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise TwilioProtocolError(f"{where} without {key!r}")
    return value


def _int(obj: dict, key: str, default: int) -> int:
    try:
        return int(obj.get(key) or default)
    except (TypeError, ValueError, OverflowError):
        raise BadStart(f"start with a non-numeric mediaFormat {key!r}") from None


def _tracks(start: dict) -> tuple[str, ...]:
    tracks = start.get("tracks", ["inbound"])
    if isinstance(tracks, str):
        tracks = [tracks]
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise BadStart("start whose 'tracks' is not a list of names")
    return tuple(tracks) or ("inbound",)


def _start(msg: dict) -> Start:
    start = msg.get("start")
    if not isinstance(start, dict):
        raise BadStart("'start' message without a 'start' object")
    fmt = start.get("mediaFormat") or {}
    params = start.get("customParameters") or {}
    if not isinstance(params, dict):
        raise BadStart("start with customParameters that are not an object")
    if not isinstance(fmt, dict):
        raise BadStart("start with a mediaFormat that is not an object")
    try:
        stream_sid = _str(start, "streamSid", "start") if "streamSid" in start else _str(msg, "streamSid", "start")
        call_sid = _str(start, "callSid", "start")
    except TwilioProtocolError as exc:
        raise BadStart(str(exc)) from None
    return Start(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid=str(start.get("accountSid") or ""),
        tracks=_tracks(start),
        custom_parameters={str(k): str(v) for k, v in params.items()},
        encoding=str(fmt.get("encoding") or "audio/x-mulaw"),
        sample_rate=_int(fmt, "sampleRate", 8000),
        channels=_int(fmt, "channels", 1),
    )


def _digit(msg: dict) -> Dtmf:
    digit = _str(_obj(msg, "dtmf"), "digit", "dtmf")
    if len(digit) != 1 or digit not in KEYPAD:
        raise TwilioProtocolError(f"dtmf whose digit is not one keypad key ({len(digit)} characters)")
    return Dtmf(digit)


def parse(text: str | bytes) -> TwilioEvent | None:
    """One frame → one event; None for event types we do not use (logged by the caller)."""
    if isinstance(text, (bytes, bytearray)):
        raise TwilioProtocolError("binary frame: Media Streams sends JSON text")
    try:
        msg = orjson.loads(text)  # 3-4x json.loads on these messages, measured
    except ValueError as exc:
        raise TwilioProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise TwilioProtocolError("JSON that is not an object")
    return parse_message(msg)


def parse_message(msg: dict[str, Any]) -> TwilioEvent | None:
    """``parse`` of a frame already decoded (a carrier whose frames are Twilio's, nearly)."""
    event = msg.get("event")
    if event == "media":
        stream_sid = _str(msg, "streamSid", "media")
        media = _obj(msg, "media")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise TwilioProtocolError("media without a 'payload' string")
        try:
            timestamp = int(media.get("timestamp") or 0)
        except (TypeError, ValueError, OverflowError):
            timestamp = 0
        return Media(payload, timestamp, str(media.get("track") or "inbound"), stream_sid)
    if event == "mark":
        return Mark(_str(_obj(msg, "mark"), "name", "mark"))
    if event == "start":
        return _start(msg)
    if event == "dtmf":
        return _digit(msg)
    if event == "stop":
        stop = msg.get("stop") if isinstance(msg.get("stop"), dict) else {}
        return Stop(str(stop.get("callSid") or ""))
    if event == "connected":
        return Connected(str(msg.get("protocol") or "Call"))
    if isinstance(event, str):
        return None
    raise TwilioProtocolError("message without an 'event' name")


# --- What we send: typed messages, serialised by ``serialize`` in the shell. ---


@dataclass(frozen=True)
class SendMedia:
    payload: str  # base64 μ-law 8 kHz


@dataclass(frozen=True)
class SendMark:
    name: str


@dataclass(frozen=True)
class SendClear:
    pass


TwilioMessage = Union[SendMedia, SendMark, SendClear]


def serialize(msg: TwilioMessage, stream_sid: str) -> str:
    sid = json.dumps(stream_sid)
    if isinstance(msg, SendMedia):
        # Built as text: this is the hot path of every agent frame, and base64 needs no escaping.
        return '{"event":"media","streamSid":%s,"media":{"payload":"%s"}}' % (sid, msg.payload)
    if isinstance(msg, SendMark):
        return '{"event":"mark","streamSid":%s,"mark":{"name":%s}}' % (sid, json.dumps(msg.name))
    return '{"event":"clear","streamSid":%s}' % sid
