"""The carrier seam, media side: one ``MediaWire`` per carrier's media websocket.

The call core (``core/call.py``) already speaks one vocabulary for a phone leg: the events of
``wire/twilio.py`` in (``Start`` with its custom parameters, ``Media`` as base64 μ-law 8 kHz,
``Mark``, ``Dtmf``, ``Stop``) and its messages out (``SendMedia``, ``SendMark``, ``SendClear``).
Those dataclasses carry no Twilio string: they *are* the neutral vocabulary, named after the
first carrier that used them. So the least risky seam (decided here) is that every carrier's
wire module translates its own frames to and from these same events, and the core is untouched:
it never learns which carrier a call is on. (Renaming ``on_twilio``/``ToTwilio`` would touch
every test of the core for no change in behaviour; that can follow on its own.)

A wire is made per stream (``make()``): a carrier whose frames need state (Telnyx reorders
media by sequence number and sends payloads of at least 20 ms) keeps it in its own object.

- ``parse(raw)``: one websocket frame → the events it releases, in order (none, one, or several
  a reorder buffer was holding). Raises ``TwilioProtocolError`` (the neutral "bad frame") with a
  reason; ``BadStart`` for a ``start`` that names no call we could serve.
- ``encode(message, stream_id)``: one neutral message → the frames to write, in order (none when
  a carrier's minimum payload holds audio back until more comes or a mark flushes it).
- An event the carrier sends that we do not use raises ``UnusedEvent`` (the shell logs it).
- Optionally ``released()``: frames the wire sends of its own accord, asked for after every
  ``parse``. A carrier with no marks and a fixed frame size (Vonage) keeps a playout clock of
  its own, advanced by the caller's frames: once playout reaches the end of what was sent, the
  audio it held back (under one frame) goes out, padded. Frames are text, or bytes for a
  carrier whose audio is binary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from telephony.wire import twilio as tw


class MediaWire(Protocol):
    carrier: str  # the metrics/record label: "twilio", "telnyx", …
    label: str  # the carrier's name in log lines: "Twilio", "Telnyx", …

    def parse(self, raw: str | bytes) -> Sequence[tw.TwilioEvent]: ...

    def encode(self, message: tw.TwilioMessage, stream_id: str) -> Sequence[str | bytes]: ...


class TwilioMedia:
    """Twilio Media Streams: the vocabulary's own format, one frame one event, stateless."""

    carrier, label = "twilio", "Twilio"

    def parse(self, raw: str | bytes) -> Sequence[tw.TwilioEvent]:
        event = tw.parse(raw)
        if event is None:
            raise UnusedEvent(raw)
        return (event,)

    def encode(self, message: tw.TwilioMessage, stream_id: str) -> Sequence[str]:
        return (tw.serialize(message, stream_id),)


class UnusedEvent(Exception):
    """A well-formed frame whose event we do not use: the shell logs it (``raw``, capped) and goes on."""

    def __init__(self, raw: str | bytes) -> None:
        super().__init__("unused event")
        self.raw = raw


TWILIO_MEDIA = TwilioMedia()  # stateless: one for every Twilio stream


def json_message(raw: str | bytes, label: str) -> dict[str, Any]:
    """A carrier's text frame as a JSON object, or the protocol error the shell logs with the
    call's id (the call goes on): a binary frame, text that is not JSON, JSON that is no object."""
    if isinstance(raw, (bytes, bytearray)):
        raise tw.TwilioProtocolError(f"binary frame: {label} sends JSON text")
    try:
        msg = orjson.loads(raw)
    except ValueError as exc:
        raise tw.TwilioProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise tw.TwilioProtocolError("JSON that is not an object")
    return msg
