"""Telnyx's side of a TeXML call, after ../shared/PROTOCOLS-carriers.md (Telnyx §1-§3).

- Webhook: the TeXML application's voice URL, POSTed form-encoded with ``AccountSid``, ``CallSid``
  (the ``call_control_id``, ``v3:…``), ``CallSidLegacy``, ``From``, ``To``, ``ConnectionId``,
  ``ApiVersion``, ``CallStatus``; signed Ed25519 over ``"{timestamp}|{raw body}"`` in
  ``telnyx-signature-ed25519`` (base64) with ``telnyx-timestamp``. Telnyx holds the private key;
  a simulator needs one of its own (``--telnyx-private-key FILE`` or ``TELNYX_PRIVATE_KEY``), and
  the service's ``TELNYX_PUBLIC_KEY`` must be its public half (``public_b64``).
- Answer: TeXML ``<Connect><Stream url bidirectionalMode="rtp" bidirectionalCodec="PCMU">`` with
  ``<Parameter>``s. Without rtp Telnyx's default mode is MP3, which this caller cannot play: refused.
- Media: JSON text. In: ``connected``, ``start`` (top-level ``stream_id``, ``sequence_number``;
  ``start.call_control_id``, ``custom_parameters``, ``media_format``), 20 ms PCMU ``media``,
  ``mark`` echoes (a clear returns the queued ones), ``stop``. Out: ``media`` (rtp: raw PCMU,
  20 ms to 30 s per chunk: a shorter one is refused here), ``mark``, ``clear``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from telephony.offline.callers.base import Carrier, DialError, Signer, StreamInstructions
from telephony.offline.simulator import (
    FRAME_MS,
    Action,
    Audio,
    CallSimulator,
    CarrierProtocolError,
    Frame,
    media_stream_action,
)
from telephony.wire.texml import MEDIA_STREAM_PATH, VOICE_PATH

USER_ID = "3e6f995f-85f7-4705-9741-53b116d28237"  # the account (user_id / AccountSid)
CONNECTION_ID = "1494404757140276705"  # the TeXML application
MIN_CHUNK_BYTES = 160  # 20 ms of PCMU: Telnyx's smallest rtp chunk


class TelnyxKey:
    """The Ed25519 key Telnyx signs its webhooks with (a signer: call it for a request's headers)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_b64 = base64.b64encode(raw).decode()  # what TELNYX_PUBLIC_KEY must be

    @classmethod
    def generate(cls) -> TelnyxKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, text: str) -> TelnyxKey:
        """A PEM (PKCS#8) private key, or base64 of the raw 32-byte one."""
        text = text.strip()
        if text.startswith("-----BEGIN"):
            key = load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("the Telnyx private key must be an Ed25519 key")
            return cls(key)
        try:
            return cls(Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise ValueError("the Telnyx private key must be a PEM Ed25519 key or base64 of its 32 raw bytes") from None

    def private_b64(self) -> str:
        """The private key as ``TELNYX_PRIVATE_KEY`` takes it (base64 of its 32 raw bytes)."""
        return base64.b64encode(self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()

    def pem(self) -> bytes:
        return self.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    def __call__(self, method: str, url: str, fields: Mapping[str, str], body: bytes,
                 timestamp: int | None = None) -> dict[str, str]:
        # A GET carries no body: what Telnyx signs then is unverified (PROTOCOLS); we only POST.
        timestamp = int(time.time()) if timestamp is None else timestamp
        signature = self.private.sign(f"{timestamp}|".encode() + body)
        return {"telnyx-signature-ed25519": base64.b64encode(signature).decode(), "telnyx-timestamp": str(timestamp)}


def parse_texml(xml: str) -> StreamInstructions:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DialError(f"the webhook's answer is not XML: {exc}") from None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise DialError("the TeXML has no <Connect><Stream url=…>")
    mode, codec = stream.get("bidirectionalMode", "mp3"), stream.get("bidirectionalCodec", "PCMU")
    if mode != "rtp" or codec != "PCMU":
        raise DialError(f"the TeXML asks for bidirectionalMode={mode!r} bidirectionalCodec={codec!r}: this caller "
                        "plays rtp PCMU only (Telnyx's mp3 default would expect MP3 files back)")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return StreamInstructions(stream.get("url", ""), parameters)


def webhook_fields(call_id: str, caller: str, callee: str) -> dict[str, str]:
    return {"AccountSid": USER_ID, "CallSid": call_id, "CallSidLegacy": "CA" + uuid.uuid4().hex,
            "From": caller, "To": callee, "ConnectionId": CONNECTION_ID, "ApiVersion": "2010-04-01",
            "CallStatus": "ringing"}


def signer_from_env(env: Mapping[str, str], options: Mapping[str, Any]) -> Signer | None:
    """``--telnyx-private-key FILE`` first, then ``TELNYX_PRIVATE_KEY`` (the key itself, PEM or base64)."""
    path = options.get("telnyx_private_key")
    if path:
        try:
            return TelnyxKey.from_text(Path(path).read_text())
        except OSError as exc:
            raise DialError(f"cannot read the Telnyx private key {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise DialError(f"{path}: {exc}") from None
    text = env.get("TELNYX_PRIVATE_KEY", "").strip()
    if not text:
        return None
    try:
        return TelnyxKey.from_text(text)
    except ValueError as exc:
        raise DialError(f"TELNYX_PRIVATE_KEY: {exc}") from None


def generated() -> tuple[dict[str, Any], dict[str, str]]:
    key = TelnyxKey.generate()
    return ({"telnyx_public_key": key.public_b64, "telnyx_validate_signatures": True},
            {"TELNYX_PRIVATE_KEY": key.private_b64()})


class TelnyxCallSimulator(CallSimulator):
    """Telnyx's media websocket for a TeXML ``<Connect><Stream>`` call (rtp, PCMU 8 kHz)."""

    carrier, label = "telnyx", "Telnyx"

    @classmethod
    def new_call_id(cls) -> str:
        return "v3:" + secrets.token_urlsafe(32)

    @classmethod
    def new_stream_id(cls) -> str:
        return str(uuid.uuid4())

    def _frame_json(self, event: str, **body: Any) -> str:
        self._seq += 1
        return json.dumps({"event": event, "sequence_number": str(self._seq), "stream_id": self.stream_sid, **body})

    def opening(self) -> list[Frame]:
        start = {"user_id": USER_ID, "call_control_id": self.call_sid, "call_session_id": str(uuid.uuid4()),
                 "from": self.from_number, "to": self.to_number, "tags": [], "client_state": None,
                 "custom_parameters": self.custom_parameters,
                 "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}
        return [json.dumps({"event": "connected", "version": "1.0.0"}), self._frame_json("start", start=start)]

    def media(self, frame: bytes, k: int, track: str) -> Frame:
        return self._frame_json("media", media={"track": track, "chunk": str(k + 1), "timestamp": str(k * FRAME_MS),
                                                "payload": base64.b64encode(frame).decode("ascii")})

    def echo(self, name: str) -> Frame:
        return self._frame_json("mark", mark={"name": name})

    def hang_up_frames(self) -> list[Frame]:
        return [self._frame_json("stop", stop={"user_id": USER_ID, "call_control_id": self.call_sid})]

    def interpret(self, raw: str | bytes) -> tuple[dict[str, Any], Action]:
        if isinstance(raw, bytes):
            raise CarrierProtocolError("a binary frame: Telnyx takes JSON text")
        msg = json.loads(raw)
        self.check(msg)
        kept, action = media_stream_action(msg)
        if isinstance(action, Audio) and len(action.ulaw) < MIN_CHUNK_BYTES:
            raise CarrierProtocolError(f"a media chunk of {len(action.ulaw)} B: Telnyx takes 20 ms (160 B) or more")
        return kept, action


CARRIER = Carrier("telnyx", VOICE_PATH, MEDIA_STREAM_PATH, TelnyxCallSimulator,
                  "TELNYX_PUBLIC_KEY (the public half of the simulator's key)",
                  webhook_fields, signer_from_env, generated, parse_texml)
