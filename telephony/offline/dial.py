"""Placing a simulated call the way Twilio does: ask the voice webhook for TwiML, then stream.

``telephony simulate`` and ``telephony demo`` both go through here: POST the call to
``/twilio/voice``, read the ``<Connect><Stream>`` URL and its ``<Parameter>``s from the answer,
and run ``TwilioCallSimulator`` against that stream with those parameters.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable

from telephony.offline.simulator import CallResult, TwilioCallSimulator
from telephony.wire.twiml import VOICE_PATH

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

HTTP_TIMEOUT_S = 5.0


class DialError(RuntimeError):
    """The webhook did not answer with a usable ``<Connect><Stream>``."""


@dataclass(frozen=True)
class StreamInstructions:
    url: str
    parameters: dict[str, str]


def webhook_url(stream_url: str) -> str:
    """ws://host:port/anything → http://host:port/twilio/voice (wss → https)."""
    parts = urllib.parse.urlsplit(stream_url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None:
        raise DialError(f"not a ws:// or wss:// URL: {stream_url!r}")
    return urllib.parse.urlunsplit((scheme, parts.netloc, VOICE_PATH, "", ""))


def parse_twiml(xml: str) -> StreamInstructions:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DialError(f"the webhook's answer is not XML: {exc}") from None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise DialError("the TwiML has no <Connect><Stream url=…>")
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return StreamInstructions(stream.get("url", ""), parameters)


def signature_headers(url: str, form: dict[str, str]) -> dict[str, str]:
    """X-Twilio-Signature as Twilio computes it, when TWILIO_AUTH_TOKEN is in our environment (the
    service refuses unsigned webhooks unless it runs with TWILIO_VALIDATE_SIGNATURES=false). The
    service checks the URL it is published at: PUBLIC_URL's, when set, else the one we call."""
    token = os.environ.get("TWILIO_AUTH_TOKEN", "").strip()
    if not token:
        return {}
    from twilio.request_validator import RequestValidator

    public = os.environ.get("PUBLIC_URL", "").strip().rstrip("/")
    signed = public + urllib.parse.urlsplit(url).path if public else url
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(signed, form)}


def fetch_twiml(url: str, call_sid: str, caller: str, callee: str) -> StreamInstructions:
    """POSTs the call as Twilio would (form-encoded, signed when we hold the auth token). Blocking:
    run it off the event loop."""
    fields = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": caller,
              "To": callee, "Direction": "inbound", "CallStatus": "ringing"}
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded",
                                              **signature_headers(url, fields)})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return parse_twiml(response.read().decode("utf-8", "replace"))
    except OSError as exc:
        raise DialError(f"cannot reach the voice webhook {url}: {exc}") from None


async def place_call(url: str, caller_audio: bytes, *, caller: str = "+15550100001",
                     callee: str = "+15550100002", tail_s: float = 8.0, hang_up_when_quiet_s: float | None = 1.5,
                     on_dialled: Callable[[StreamInstructions, TwilioCallSimulator], None] | None = None
                     ) -> tuple[StreamInstructions, CallResult]:
    """Fetches the TwiML for ``url``'s host, then streams ``caller_audio`` (μ-law 8 kHz) and
    listens for up to ``tail_s`` more seconds (less once the agent has answered and gone quiet)."""
    call_sid = "CA" + uuid.uuid4().hex
    twiml = await asyncio.to_thread(fetch_twiml, webhook_url(url), call_sid, caller, callee)
    sim = TwilioCallSimulator(twiml.url, caller_audio=caller_audio, call_sid=call_sid,
                              custom_parameters=twiml.parameters,
                              duration_s=len(caller_audio) / 8000 + tail_s,
                              hang_up_when_quiet_s=hang_up_when_quiet_s)
    if on_dialled is not None:
        on_dialled(twiml, sim)
    return twiml, await sim.run()


def simulate(url: str, play: str | None, record: str, *, listen_s: float = 8.0,
             hang_up_after_s: float | None = 1.5, caller: str = "+15550100001",
             callee: str = "+15550100002") -> int:
    """``telephony simulate``: one call with a live timeline; writes the stereo recording."""
    from telephony.offline.call_analysis import CALLER_GAP_S, measure, spans
    from telephony.offline.call_console import CallConsole
    from telephony.offline.wavfile import read_call, read_pcm8k, write_call

    async def run() -> None:
        pcm = read_pcm8k(play) if play else None
        audio = audioop.lin2ulaw(pcm.astype("<i2").tobytes(), 2) if pcm is not None else b""
        turns = spans(pcm, 8000, CALLER_GAP_S) if pcm is not None else []
        console = CallConsole()

        def dialled(twiml: StreamInstructions, sim: TwilioCallSimulator) -> None:
            print(f"TwiML: stream {twiml.url} parameters {twiml.parameters}")
            console.attach(sim, turns)

        try:
            _, result = await place_call(url, audio, caller=caller, callee=callee, tail_s=listen_s,
                                         hang_up_when_quiet_s=hang_up_after_s, on_dialled=dialled)
        finally:
            await console.close()
        write_call(record, result.caller, result.agent)
        print(f"\nrecorded {record} (stereo: caller left, agent right, 8 kHz 16-bit)")
        console.summary(measure(*read_call(record)), clears=result.clears)

    try:
        asyncio.run(run())
    except (DialError, OSError, EOFError, ValueError) as exc:
        print(f"telephony simulate: {exc}", file=sys.stderr)
        return 1
    return 0
