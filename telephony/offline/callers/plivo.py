"""Plivo's side of a call, after ../shared/PROTOCOLS-carriers.md (Plivo §1-§3).

- Webhook: the Answer URL, POSTed form-encoded with ``CallUUID``, ``From``, ``To`` (E.164 digits
  without the "+"), ``CallStatus``, ``Direction``; signed V3 (``X-Plivo-Signature-V3`` and its
  ``-Nonce``) with the auth token, as plivo-python's ``signature_v3`` computes it: base64
  HMAC-SHA256 over the URL (for a POST: "?" + its own query sorted ``k=v&…``, "." if it had
  one, then the fields sorted as ``namevalue…``) + "." + nonce. Written here from that
  description, not shared with the service's check, so that one cannot hide the other's slip.
- Answer: ``<Stream bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000">``
  with the URL as its text; anything else (a one-way stream, Plivo's L16 default, no
  keepCallAlive, which drops the call at once) is refused here. ``extraHeaders`` (``k=v,…``) come
  back as the ``extra_headers`` string of ``start`` and ``media``.
- Media: JSON text. In: ``start`` (``sequenceNumber`` a number; ``start.callId``, ``streamId``,
  ``mediaFormat``), 20 ms ``media``, ``playedStream`` when playback reaches a checkpoint,
  ``clearedAudio`` after a clear (the pending checkpoints are never reported); no ``stop``: the
  socket just closes. Out: ``playAudio`` (in the stream's content type), ``checkpoint``,
  ``clearAudio``, the last two naming our ``streamId``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlsplit

from telephony.offline.callers.base import Carrier, DialError, Signer, StreamInstructions
from telephony.offline.simulator import (
    Action,
    Audio,
    CallSimulator,
    CarrierProtocolError,
    Clear,
    Frame,
    Mark,
)
from telephony.wire.plivo import MEDIA_STREAM_PATH, VOICE_PATH

AUTH_ID = "MAOFFLINESIMULATOR00"
CONTENT_TYPE = "audio/x-mulaw;rate=8000"


def v3_base(method: str, url: str, fields: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    query = sorted(parse_qsl(parts.query, keep_blank_values=True))
    if method == "GET":
        joined = "&".join(f"{k}={v}" for k, v in sorted(query + list(fields.items())))
        return f"{base}?{joined}" if joined else base
    if not fields:
        return f"{base}?" + "&".join(f"{k}={v}" for k, v in query) if query else base
    text = f"{base}?" + "&".join(f"{k}={v}" for k, v in query) + ("." if query else "")
    return text + "".join(f"{k}{v}" for k, v in sorted(fields.items()))


def signer(auth_token: str) -> Signer:
    def sign(method: str, url: str, fields: Mapping[str, str], body: bytes) -> dict[str, str]:
        nonce = secrets.token_hex(10)
        message = f"{v3_base(method, url, fields)}.{nonce}".encode()
        digest = hmac.new(auth_token.encode(), message, hashlib.sha256).digest()
        return {"X-Plivo-Signature-V3": base64.b64encode(digest).decode(), "X-Plivo-Signature-V3-Nonce": nonce}
    return sign


def parse_xml(xml: str) -> StreamInstructions:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DialError(f"the webhook's answer is not XML: {exc}") from None
    stream = root.find("./Stream")
    url = (stream.text or "").strip() if stream is not None else ""
    if stream is None or not url:
        raise DialError("the Plivo XML has no <Stream> with a URL")
    bidirectional, alive = stream.get("bidirectional", "false"), stream.get("keepCallAlive", "false")
    content_type = stream.get("contentType", "audio/x-l16;rate=8000")
    if bidirectional != "true" or alive != "true" or content_type != CONTENT_TYPE:
        raise DialError(f"the Plivo XML asks for bidirectional={bidirectional} keepCallAlive={alive} "
                        f"contentType={content_type}: this caller plays a bidirectional {CONTENT_TYPE} stream "
                        "kept alive (without keepCallAlive Plivo hangs up at once)")
    pairs = [p.partition("=") for p in stream.get("extraHeaders", "").split(",") if p]
    return StreamInstructions(url, {k: v for k, _, v in pairs})


def webhook_fields(call_id: str, caller: str, callee: str) -> dict[str, str]:
    return {"CallUUID": call_id, "From": caller.lstrip("+"), "To": callee.lstrip("+"), "ForwardedFrom": "",
            "CallStatus": "ringing", "Direction": "inbound"}


def signer_from_env(env: Mapping[str, str], options: Mapping[str, Any]) -> Signer | None:
    token = env.get("PLIVO_AUTH_TOKEN", "").strip()
    return signer(token) if token else None


def generated() -> tuple[dict[str, Any], dict[str, str]]:
    token = secrets.token_hex(20)
    return ({"plivo_auth_id": AUTH_ID, "plivo_auth_token": token, "plivo_validate_signatures": True},
            {"PLIVO_AUTH_TOKEN": token})


class PlivoCallSimulator(CallSimulator):
    """Plivo's audio stream for a bidirectional ``<Stream>`` (μ-law 8 kHz)."""

    carrier, label = "plivo", "Plivo"
    clear_echoes_marks = False  # checkpoints cleared are never reported; clearedAudio is

    @classmethod
    def new_call_id(cls) -> str:
        return str(uuid.uuid4())

    @classmethod
    def new_stream_id(cls) -> str:
        return str(uuid.uuid4())

    def _headers(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.custom_parameters.items())

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def opening(self) -> list[Frame]:
        return [json.dumps({"event": "start", "sequenceNumber": self._next(), "start": {
            "callId": self.call_sid, "streamId": self.stream_sid, "accountId": AUTH_ID, "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}, "extra_headers": self._headers()})]

    def media(self, frame: bytes, k: int, track: str) -> Frame:
        return json.dumps({"event": "media", "sequenceNumber": self._next(), "streamId": self.stream_sid,
                           "media": {"track": track, "timestamp": str(int(time.time() * 1000)), "chunk": k + 1,
                                     "payload": base64.b64encode(frame).decode("ascii")},
                           "extra_headers": self._headers()})

    def echo(self, name: str) -> Frame:
        return json.dumps({"event": "playedStream", "sequenceNumber": self._next(), "streamId": self.stream_sid,
                           "name": name})

    def cleared(self) -> list[Frame]:
        return [json.dumps({"event": "clearedAudio", "sequenceNumber": self._next(), "streamId": self.stream_sid})]

    def _ours(self, msg: dict[str, Any]) -> None:
        if msg.get("streamId") != self.stream_sid:
            raise CarrierProtocolError(f"{msg.get('event')} for stream {msg.get('streamId')!r}, not this one")

    def interpret(self, raw: str | bytes) -> tuple[dict[str, Any], Action]:
        if isinstance(raw, bytes):
            raise CarrierProtocolError("a binary frame: Plivo takes JSON text")
        msg = json.loads(raw)
        self.check(msg)
        event = msg.get("event")
        if event == "playAudio":
            media = msg["media"]
            if (media.get("contentType"), media.get("sampleRate")) != ("audio/x-mulaw", 8000):
                raise CarrierProtocolError(f"playAudio as {media.get('contentType')} at {media.get('sampleRate')} Hz "
                                           f"on a {CONTENT_TYPE} stream")
            audio = base64.b64decode(media["payload"])
            return {"event": "media", "bytes": len(audio)}, Audio(audio)
        if event == "checkpoint":
            self._ours(msg)
            return msg, Mark(msg["name"])
        if event == "clearAudio":
            self._ours(msg)
            return msg, Clear()
        return msg, None


CARRIER = Carrier("plivo", VOICE_PATH, MEDIA_STREAM_PATH, PlivoCallSimulator, "PLIVO_AUTH_TOKEN",
                  webhook_fields, signer_from_env, generated, parse_xml)
