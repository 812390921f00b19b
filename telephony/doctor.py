"""`telephony doctor`: what the service is configured to do, and whether the provider answers.

It prints the provider URL, dialect and codec, and with ``--connect`` makes one handshake and
reports the ``session.created`` it got. It never prints a key: only whether one is set.
"""

from __future__ import annotations

import asyncio
import json
from typing import TextIO

from . import realtime_client
from .app import DIALECTS
from .settings import Settings

HANDSHAKE_TIMEOUT_S = 8.0


def _summary(session: dict) -> str:
    keys = ("id", "model", "voice", "input_audio_format", "output_audio_format", "type")
    found = {k: session[k] for k in keys if isinstance(session.get(k), (str, int))}
    audio = session.get("audio")
    if isinstance(audio, dict):
        for side in ("input", "output"):
            fmt = (audio.get(side) or {}).get("format")
            if fmt:
                found[f"audio.{side}.format"] = fmt
    return json.dumps(found)


async def run_doctor(settings: Settings, connect: bool, out: TextIO) -> int:
    dialect = DIALECTS[settings.realtime_dialect]
    print(f"Realtime URL:     {realtime_client.realtime_url(settings)}", file=out)
    print(f"Realtime dialect: {settings.realtime_dialect}", file=out)
    print(f"Audio codec:      {settings.audio_codec}", file=out)
    print(f"API key:          {'set' if settings.realtime_api_key else 'NOT SET'}", file=out)
    if settings.public_url:
        print(f"Voice webhook:    {settings.public_url}/twilio/voice", file=out)
    if not connect:
        return 0 if settings.realtime_api_key or settings.realtime_url == "local" else 1
    try:
        transport = await realtime_client.connect(settings, dialect.headers)
    except Exception as exc:
        print(f"Handshake:        FAILED: {type(exc).__name__}: {exc}", file=out)
        return 1
    try:
        text = await asyncio.wait_for(transport.recv(), HANDSHAKE_TIMEOUT_S)
        event = json.loads(text)
    except Exception as exc:
        print(f"Handshake:        connected, but no first event: {type(exc).__name__}: {exc}", file=out)
        return 1
    finally:
        await transport.close()
    if event.get("type") != "session.created":
        print(f"Handshake:        connected, first event was {event.get('type')!r}", file=out)
        return 1
    print(f"Handshake:        OK, session.created {_summary(event.get('session') or {})}", file=out)
    return 0
