"""`telephony doctor`: what the service is configured to do, and whether the provider answers.

It prints the provider URL, dialect and codec, the exact webhook URLs to give Twilio, whether the
Twilio account keys work, and with ``--connect`` makes one handshake and reports the
``session.created`` it got. It never prints a key: only whether one is set.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Mapping, TextIO
from urllib.parse import urlsplit, urlunsplit

from twilio.base.exceptions import TwilioRestException
from twilio.http import HttpClient

from telephony.ops import tracing, twilio_admin
from telephony.serve import realtime_client
from telephony.settings import Settings
from telephony.wire import realtime as rt
from telephony.wire.dialects import DIALECTS

HANDSHAKE_TIMEOUT_S = 8.0
COLLECTOR_TIMEOUT_S = 5.0


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


def _public_url(settings: Settings, out: TextIO) -> bool:
    """Prints the exact URLs to give Twilio; False when the base URL cannot work."""
    if not settings.public_url:
        print("Public URL:       WARNING: not set; set PUBLIC_URL to this service's public https:// URL "
              "(until then webhook signatures are checked against, and the URLs handed to Twilio are "
              "built on, each request's Host header)", file=out)
        return True
    problems = twilio_admin.public_url_problems(settings.public_url)
    print(f"Public URL:       {settings.public_url}"
          + (f"  PROBLEM: {'; '.join(problems)}" if problems else ""), file=out)
    hooks = twilio_admin.webhooks(settings.public_url)
    print(f"Voice webhook:    {hooks.voice}", file=out)
    print(f"Media stream:     {hooks.media_stream}/<signed per call, named by the TwiML>", file=out)
    print(f"Status callback:  {hooks.status}", file=out)
    return not problems


def _twilio_account(settings: Settings, out: TextIO, http_client: HttpClient | None) -> bool:
    """Asks Twilio whether the account keys work. Unreachable is reported, not failed."""
    sid, token = settings.twilio_account_sid, settings.twilio_auth_token
    if not sid and not token:
        print("Twilio account:   not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN; "
              "needed only by configure-number)", file=out)
        return True
    if not (sid and token):
        print(f"Twilio account:   PROBLEM: {'TWILIO_AUTH_TOKEN' if sid else 'TWILIO_ACCOUNT_SID'} is not set",
              file=out)
        return False
    try:
        summary = twilio_admin.check_account(twilio_admin.client(settings, http_client), sid)
    except TwilioRestException as exc:
        print(f"Twilio account:   FAILED: {sid} refused: {twilio_admin.describe_rest_error(exc)}", file=out)
        return False
    except Exception as exc:  # network down, DNS: the keys may still be right
        print(f"Twilio account:   not checked, Twilio unreachable: {type(exc).__name__}", file=out)
        return True
    print(f"Twilio account:   OK, {sid}: {summary}", file=out)
    return True


def _retired_dialect(settings: Settings) -> str | None:
    """Why the dialect cannot work at REALTIME_URL: api.openai.com refuses the beta shape (error
    beta_api_shape_disabled, close 4000) on every call since May 2026."""
    if settings.realtime_dialect == "beta" and settings.realtime_provider_is_openai():
        return ("api.openai.com has retired the Realtime beta protocol and refuses every such session; "
                "set REALTIME_DIALECT=ga")
    return None


def _api_key(settings: Settings) -> str:
    if settings.realtime_api_key:
        return "set"
    if settings.openai_api_key:  # what OpenAI's SIP route uses when REALTIME_API_KEY is unset
        return "OPENAI_API_KEY set (OpenAI's SIP route; Twilio calls need REALTIME_API_KEY)"
    return "NOT SET"


async def run_doctor(settings: Settings, connect: bool, out: TextIO,
                     twilio_http: HttpClient | None = None) -> int:
    dialect = DIALECTS[settings.realtime_dialect]
    url = realtime_client.realtime_url(settings, dialect=dialect)
    print(f"Realtime URL:     {url}", file=out)
    retired = _retired_dialect(settings)
    print(f"Realtime dialect: {settings.realtime_dialect}" + (f"  WARNING: {retired}" if retired else ""), file=out)
    print(f"Audio codec:      {settings.audio_codec}", file=out)
    print(f"API key:          {_api_key(settings)}", file=out)
    ok = _public_url(settings, out)  # a retired dialect warns: it may be on purpose, against a proxy
    ok = await asyncio.to_thread(_twilio_account, settings, out, twilio_http) and ok
    ok = await _traces(settings, connect, out) and ok
    if not connect:
        return 0 if ok and (settings.realtime_api_key or settings.realtime_url == "local") else 1
    handshake = await _handshake(settings, dialect, out)
    return handshake if ok else 1


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _otel_headers(env: Mapping[str, str]) -> dict[str, str]:
    """The exporter's headers as the SDK reads them (the traces variable, else the general one)."""
    from opentelemetry.util.re import parse_env_headers

    text = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    return dict(parse_env_headers(text, liberal=True))


async def _traces(settings: Settings, connect: bool, out: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether traces are on, where they go and under which service name; the headers' names, never
    their values (they carry the collector's key). With --connect, an empty export is sent."""
    env = os.environ if env is None else env
    endpoint = tracing.traces_endpoint(settings)
    if endpoint is None:
        print("Traces:           off (set OTEL_EXPORTER_OTLP_ENDPOINT to export a trace per call)", file=out)
        return True
    service = env.get("OTEL_SERVICE_NAME") or tracing.SERVICE_NAME
    headers = _otel_headers(env)
    named = f"; headers {', '.join(sorted(headers))} (values not shown)" if headers else ""
    print(f"Traces:           on, OTLP/HTTP to {_without_userinfo(endpoint)} as service {service!r}{named}", file=out)
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        print(f"Traces:           PROBLEM: OTEL_EXPORTER_OTLP_PROTOCOL is {protocol!r}; this service sends "
              "http/protobuf only (the collector's OTLP/HTTP port, usually 4318)", file=out)
        return False
    if not connect:
        return True
    import httpx

    try:  # an empty ExportTraceServiceRequest is an empty protobuf body: it exports nothing
        async with httpx.AsyncClient(timeout=COLLECTOR_TIMEOUT_S) as client:
            answer = await client.post(endpoint, content=b"",
                                       headers={**headers, "Content-Type": "application/x-protobuf"})
    except httpx.HTTPError as exc:
        print(f"Collector:        FAILED: {type(exc).__name__}", file=out)
        return False
    if answer.status_code != 200:
        print(f"Collector:        FAILED: HTTP {answer.status_code}", file=out)
        return False
    print("Collector:        OK, an empty export was accepted", file=out)
    return True


async def _handshake(settings: Settings, dialect, out: TextIO) -> int:
    try:
        transport = await realtime_client.connect(settings, dialect.headers, dialect=dialect)
    except Exception as exc:
        print(f"Handshake:        FAILED: {type(exc).__name__}: {exc}", file=out)
        return 1
    first = "session.created"
    try:
        if dialect.capabilities.ready_first:  # Live says nothing until it is sent session.start
            first = "session.started"
            config = rt.SessionConfig(instructions="", voice="marin", audio_format=settings.audio_codec,
                                      model=settings.realtime_model)
            transport.send(json.dumps(dialect.encode(rt.ConfigureSession(config))))
        text = await asyncio.wait_for(transport.recv(), HANDSHAKE_TIMEOUT_S)
        event = json.loads(text)
    except Exception as exc:
        print(f"Handshake:        connected, but no first event: {type(exc).__name__}: {exc}", file=out)
        return 1
    finally:
        await transport.close()
    if event.get("type") != first:
        print(f"Handshake:        connected, first event was {event.get('type')!r}", file=out)
        return 1
    print(f"Handshake:        OK, {first} {_summary(event.get('session') or {})}", file=out)
    return 0
