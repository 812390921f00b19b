"""Shared test helpers: signals, schema checks."""

from __future__ import annotations

import audioop
from typing import Any

import numpy as np
from openai.types.beta.realtime import RealtimeClientEvent as BetaClientEvent
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.live import ClientEvent as LiveClientEvent
from openai.types.live import ServerEvent as LiveServerEvent
from openai.types.realtime import RealtimeClientEvent as GaClientEvent
from openai.types.realtime import RealtimeServerEvent as GaServerEvent
from pydantic import BaseModel, TypeAdapter

_ADAPTERS = {
    ("beta", "client"): TypeAdapter(BetaClientEvent),
    ("beta", "server"): TypeAdapter(BetaServerEvent),
    ("ga", "client"): TypeAdapter(GaClientEvent),
    ("ga", "server"): TypeAdapter(GaServerEvent),
    ("live", "client"): TypeAdapter(LiveClientEvent),
    ("live", "server"): TypeAdapter(LiveServerEvent),
}


def validate_event(event: dict[str, Any], dialect: str = "beta", side: str = "client") -> None:
    """Validates against the openai package's model, and refuses fields the model does not know
    (the models themselves accept extras, which would let a misspelt field through)."""
    model = _ADAPTERS[(dialect, side)].validate_python(event)
    # The local engine's beta/GA server events carry a few fields the real service sends and the
    # SDK's models leave out; those are named here, and any other extra fails.
    allowed = SERVER_EXTRAS if side == "server" and dialect != "live" else {}
    _assert_no_extra(model, event.get("type", "?"), allowed)


# Fields the real Realtime service sends that the openai package's server-event models omit, by
# where they sit: the session object's own "object" ("realtime.session") and, in GA, its "id".
SERVER_EXTRAS = {f"{event}.session": {"object", "id"} for event in ("session.created", "session.updated")}


def _assert_no_extra(value: Any, where: str, allowed: dict[str, set[str]] | None = None) -> None:
    """Walks the parsed models: any field kept as an extra is one the schema does not know.

    (``model_dump`` cannot tell: with ``extra="allow"`` it returns the extras too.)"""
    allowed = allowed or {}
    if isinstance(value, BaseModel):
        unknown = set(value.model_extra or ()) - allowed.get(where, set())
        assert not unknown, f"{where}: fields the schema does not know: {unknown}"
        for name in type(value).model_fields:
            _assert_no_extra(getattr(value, name), f"{where}.{name}", allowed)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _assert_no_extra(item, f"{where}[{i}]", allowed)


def ulaw_tone(freq: float, seconds: float, amplitude: float = 8000.0) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    return audioop.lin2ulaw((amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes(), 2)


def ulaw_silence(seconds: float) -> bytes:
    return b"\xff" * int(8000 * seconds)


def dominant_freq(ulaw: bytes, rate: int = 8000) -> float:
    x = np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2").astype(np.float64)
    if len(x) < 64 or np.sqrt(np.mean(x ** 2)) < 100:
        return 0.0
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(mag) * rate / len(x))


def active_spans(ulaw: bytes, frame: int = 160, threshold: float = 200.0) -> list[tuple[float, float]]:
    """(start s, end s) of stretches where the audio is not silent, frame by frame."""
    pcm = np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2").astype(np.float64)
    spans, start = [], None
    for i in range(0, len(pcm) - frame + 1, frame):
        loud = np.sqrt(np.mean(pcm[i:i + frame] ** 2)) >= threshold
        if loud and start is None:
            start = i
        elif not loud and start is not None:
            spans.append((start / 8000, i / 8000))
            start = None
    if start is not None:
        spans.append((start / 8000, len(pcm) / 8000))
    return spans


def joined(spans: list[tuple[float, float]], gap_s: float = 0.1) -> list[tuple[float, float]]:
    """Spans with gaps under ``gap_s`` joined: a model that streams barely faster than real time
    (the scripted server at speed 1.2) underruns for a few frames when a loaded machine delays a
    delta; that is the model's pace, not the bridge dropping audio."""
    out: list[tuple[float, float]] = []
    for start, end in spans:
        if out and start - out[-1][1] < gap_s:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def simulated_call(app, host: str, call_sid: str | None = None, parameters: dict[str, str] | None = None,
                   path: str = "/twilio/media-stream", **kwargs):
    """A simulated caller on the URL, and with the token, that the app's TwiML would have given it."""
    import time
    import uuid

    from telephony.offline.simulator import TwilioCallSimulator
    from telephony.serve.security import AGENT_STREAM, TRANSCRIPTION_STREAM
    from telephony.wire.twiml import TRANSCRIBE_STREAM_PATH

    call_sid = call_sid or "CA" + uuid.uuid4().hex
    purpose = TRANSCRIPTION_STREAM if path == TRANSCRIBE_STREAM_PATH else AGENT_STREAM  # tokens name their route
    signed = app.state.stream_tokens.with_token({"call_sid": call_sid, **(parameters or {})}, time.time(), purpose)
    return TwilioCallSimulator(stream_url(app, host, call_sid, path), call_sid=call_sid,
                               custom_parameters=signed, **kwargs)


def stream_url(app, host: str, call_sid: str, path: str = "/twilio/media-stream") -> str:
    """The signed URL the app's TwiML names for ``call_sid``'s stream on ``path`` (its route), on
    loopback: the only one the app accepts a socket on."""
    import time

    from telephony.serve.security import AGENT_STREAM, TRANSCRIPTION_STREAM
    from telephony.serve.stream_paths import signed_stream_url
    from telephony.wire.twiml import TRANSCRIBE_STREAM_PATH

    purpose = TRANSCRIPTION_STREAM if path == TRANSCRIBE_STREAM_PATH else AGENT_STREAM
    return signed_stream_url(f"ws://{host}{path}", app.state.stream_tokens, purpose, call_sid, time.time())


async def twilio_post(host: str, path: str, form: dict[str, str], auth_token: str | None = None,
                      public_base: str = "https://bridge.example.com"):
    """POSTs a webhook as Twilio does: form-encoded, behind a proxy, signed when a token is given."""
    import httpx
    from twilio.request_validator import RequestValidator

    headers = {"X-Forwarded-Proto": public_base.split("://")[0], "Host": public_base.split("://")[1]}
    if auth_token:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(
            public_base + path, form)
    async with httpx.AsyncClient() as client:
        return await client.post(f"http://{host}{path}", data=form, headers=headers)


def stream_from_twiml(twiml: str, host: str | None = None) -> tuple[str, dict[str, str]]:
    """The <Stream url> and <Parameter>s of a TwiML answer, as Twilio reads them; with ``host``,
    the URL's scheme and host moved to ws://host (what a proxy in front of the app would do)."""
    import urllib.parse
    import xml.etree.ElementTree as ET

    stream = next(ET.fromstring(twiml).iter("Stream"))
    url = stream.get("url", "")
    if host is not None:
        url = urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(scheme="ws", netloc=host))
    return url, {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}


def stream_parameters(twiml: str) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    return {p.get("name"): p.get("value") for p in ET.fromstring(twiml).iter("Parameter")}


async def wait_until(condition, what: str, timeout: float = 10.0, every: float = 0.01) -> None:
    """Polls ``condition`` (a function, sync or async) until it is true: a wait on the state the
    test needs, never a guess at how long the server takes. Fails, naming ``what``, at ``timeout``."""
    import asyncio
    import inspect
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(every)


def free_port() -> int:
    """A loopback port nothing listens on now, for a server started in another process."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def follow_feed(client, url: str, turns: list[dict], headers: dict[str, str], timeout_s: float = 60) -> bool:
    """Follows a call's transcript feed (SSE), appending each turn as it comes; True once it
    ended with ``event: end`` (a caller may cancel it and keep what came)."""
    import json
    event = None
    async with client.stream("GET", url, headers=headers, timeout=timeout_s) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "transcript":
                turns.append(json.loads(line[6:]))
            elif line.startswith("data: ") and event == "end":
                return True
    return False
