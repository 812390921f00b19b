"""Twilio's side, checked against Twilio's documented message shapes rather than our own model.

One JSON Schema per message the bridge sends on a bidirectional Media Stream (tests/data/twilio,
written from Twilio's "Media Streams - WebSocket Messages" page). conftest switches this on for
every simulated call, as the openai package's models check the Realtime side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_DIR = Path(__file__).parent / "data" / "twilio"
VALIDATORS = {path.stem: Draft202012Validator(json.loads(path.read_text()))
              for path in sorted(SCHEMA_DIR.glob("*.json"))}


class TwilioProtocolError(AssertionError):
    """A message Twilio would refuse (error 31951: unknown type, missing or extra field, wrong sid)."""


def validate_to_twilio(message: dict[str, Any], stream_sid: str) -> None:
    event = message.get("event")
    validator = VALIDATORS.get(event) if isinstance(event, str) else None
    if validator is None:
        raise TwilioProtocolError(f"Twilio takes only {sorted(VALIDATORS)} messages, not {event!r}")
    errors = sorted(validator.iter_errors(message), key=lambda e: list(e.path))
    if errors:
        raise TwilioProtocolError(f"{event} message breaks Twilio's schema: {errors[0].message} "
                                  f"at {list(errors[0].path)}")
    if message["streamSid"] != stream_sid:
        raise TwilioProtocolError(f"{event} message for stream {message['streamSid']}, not {stream_sid}")
