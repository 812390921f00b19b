"""The web app: Twilio's webhooks and media streams, the calls API, and a health check.

Thin by design: each handler turns a request into a call of the core or of a small module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import replace
from typing import Callable
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from telephony.core import sip
from telephony.core.actions import Record
from telephony.core.call import Call
from telephony.core.profile import Profile
from telephony.core.profile_choice import Profiles, load_profiles
from telephony.core.transcription import ForkTranscription
from telephony.history import reader as history_reader
from telephony.history.api import HistoryApi
from telephony.history.database import database_for
from telephony.history.recorder import CallHistory
from telephony.history.writer import HistoryWriter
from telephony.ops import logs
from telephony.ops.metrics import CONTENT_TYPE, Metrics
from telephony.ops.records import CallRecordFile
from telephony.ops.tracing import call_tracing
from telephony.serve import outbound, recordings, upstream
from telephony.serve.admission import BUSY, NOT_CALLS, ROUTE_OFF, StreamGate
from telephony.serve.bridge import Bridge
from telephony.serve.carriers import CarrierControl, CarrierError
from telephony.serve.carriers import plivo as plivo_rest
from telephony.serve.carriers import telnyx as telnyx_rest
from telephony.serve.carriers import vonage as vonage_rest
from telephony.serve.carriers.signalwire import SignalWireControl, SignalWireSignatures
from telephony.serve.claims import Claims
from telephony.serve.dashboard import Dashboard
from telephony.serve.dashboard import Sources as DashboardSources
from telephony.serve.fork import ForkBridge
from telephony.serve.handoff import Handoff
from telephony.serve.limits import CallRegistry
from telephony.serve.outbound import RequestError
from telephony.serve.security import (
    AGENT_STREAM,
    OUTBOUND_ANSWER,
    TRANSCRIPTION_STREAM,
    WEBHOOK_BODY_LIMIT,
    StreamTokens,
    WebhookGuard,
    read_capped_body,
    signed_url,
    stream_key,
    valid_call_sid,
)
from telephony.serve.shared_state import call_entry, make_state
from telephony.serve.stream_paths import signed_stream_url
from telephony.serve.telemetry import CallObserver
from telephony.serve.tools import ToolRunner, python_tool
from telephony.serve.transcripts import TranscriptHub
from telephony.serve.twilio_rest import CallControl, TwilioError
from telephony.serve.upstream import Connector
from telephony.settings import Settings, SettingsError
from telephony.wire import plivo as plivo_wire
from telephony.wire import signalwire as signalwire_wire
from telephony.wire import telnyx as telnyx_wire
from telephony.wire import texml
from telephony.wire import vonage as vonage_wire
from telephony.wire.dialects import DIALECTS
from telephony.wire.media import TWILIO_MEDIA, MediaWire
from telephony.wire.openai_sip import OPENAI_SIP_PATH
from telephony.wire.path_parameters import parameters_from_segment, parameters_segment
from telephony.wire.twilio import BadStart
from telephony.wire.twiml import (
    AMD_CALLBACK_PATH,
    MEDIA_STREAM_PATH,
    OUTBOUND_ANSWER_PATH,
    STATUS_CALLBACK_PATH,
    TRANSCRIBE_AND_FORWARD_PATH,
    TRANSCRIBE_STREAM_PATH,
    VOICE_PATH,
    connect_stream,
    fork_and_dial,
    reject_busy,
    say_and_hang_up,
    websocket_url,
)

log = logging.getLogger("telephony.app")

OUTBOUND_URL_TTL_S = 600  # an outbound call's answer URL must outlive its ringing
VOICEMAIL_TTL_S = 300  # Twilio's AMD verdict comes within seconds of the answer


def voicemail_key(call_sid: str) -> str:
    return f"voicemail:{call_sid}"


def public_base_url(request: Request, settings: Settings) -> str:
    """The URL Twilio used to reach us: PUBLIC_URL, else the request's Host with the scheme uvicorn
    took from a trusted proxy (FORWARDED_ALLOW_IPS). X-Forwarded-Host is never trusted."""
    if settings.public_url:
        return settings.public_url
    return f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}"


def refuse_unprotected(settings: Settings) -> None:
    """Safe by default: without TWILIO_AUTH_TOKEN no webhook can be verified, and anyone who found
    the URL could open calls on the operator's model key and drive the business tools. The service
    serves unsigned webhooks only when told so explicitly (development)."""
    if settings.twilio_validate_signatures and not settings.twilio_auth_token:
        raise SettingsError(
            "TWILIO_AUTH_TOKEN: not set, so Twilio's webhook signatures cannot be checked and anyone "
            "could place calls on your model key; set it to your Twilio auth token, or set "
            "TWILIO_VALIDATE_SIGNATURES=false for local development only")


def check_configuration(settings: Settings, profiles: Profiles | None = None) -> None:
    """What create_app refuses, checked without building it (the supervisor calls it before any
    worker starts, so a bad setting stops the service at once instead of a restart loop). Raises
    SettingsError or ProfileError naming the variable or the profile."""
    refuse_unprotected(settings)
    profiles = profiles or load_profiles(settings.profile_path())
    ToolRunner(settings.tools_secret).check(profiles, settings.realtime_dialect)
    if settings.openai_webhook_secret:
        settings.require_openai_key()
    if settings.vonage_private_key:
        try:
            vonage_rest.load_private_key(settings.vonage_private_key)
        except CarrierError as exc:
            raise SettingsError(str(exc)) from None
    if settings.recordings_url:
        try:
            recordings.open_store(settings.recordings_url)
        except (recordings.RecordingsError, ImportError) as exc:
            raise SettingsError(f"RECORDINGS_URL: {exc}") from None


def create_app(settings: Settings | None = None, profile: Profile | Profiles | None = None,
               connector_factory: Callable[[Settings], Connector] | None = None,
               claims: Claims | None = None) -> Starlette:
    """``profile``: one profile for every call, or several chosen per number (default: AGENT_PROFILE).
    ``claims``: where streams claim their token and call (default: the shared state, so with
    REDIS_URL a token opens one stream across all instances)."""
    settings = settings or Settings.from_env()
    profiles = (Profiles.single(profile) if isinstance(profile, Profile)
                else profile or load_profiles(settings.profile_path()))
    check_configuration(settings, profiles)
    if not settings.public_url:
        log.warning("PUBLIC_URL is not set: webhook signatures and the URLs handed to Twilio follow "
                    "each request's Host header; set PUBLIC_URL to this service's public https URL")
    profile = profiles.default
    recorded = (recordings.Recordings(recordings.open_store(settings.recordings_url))
                if settings.recordings_url else None)
    tool_runner = ToolRunner(settings.tools_secret)
    python_tool.THREADS.resize(settings.tool_threads)
    dialect = DIALECTS[settings.realtime_dialect]
    active: set[Call] = set()
    metrics = Metrics()
    tracing = call_tracing(settings)  # None unless an OTLP endpoint is set: then nothing is imported or made per call
    calls = CallRegistry(settings.max_concurrent_calls)
    signed = WebhookGuard(settings, lambda request: public_base_url(request, settings))
    key = stream_key(settings)
    tokens = StreamTokens(key, settings.stream_token_ttl_seconds)
    outbound_signer = StreamTokens(key, OUTBOUND_URL_TTL_S)
    # Calls, feeds and limits: this process's, or all instances' (Redis).
    state = make_state(settings.redis_url, settings.redis_timeout_seconds)
    # Streams claim their token and call where every instance sees them (Redis), or in this process.

    def stream_refused(route: str, reason: str) -> None:
        metrics.streams_refused.labels(route, reason).inc()
        if reason not in NOT_CALLS:
            metrics.calls.labels("refused").inc()  # a stream on a URL we issued that never became a call

    gate = StreamGate(tokens, claims or state, start_timeout_s=settings.stream_start_timeout_seconds,
                      max_pending=settings.max_pending_streams or settings.max_concurrent_calls or 50,
                      max_message_bytes=settings.max_message_bytes, on_refused=stream_refused)
    by_sid: dict[str, Bridge] = {}  # calls streaming through this instance, for AMD verdicts
    transcripts = TranscriptHub(settings.transcript_webhook_url, state)
    # Every call's history, written by one background task (never awaited by a call).
    history = HistoryWriter(database_for(settings.database_url)) if settings.call_history else None
    if history is not None:
        history.prepare()
    history_api = HistoryApi(history)

    def call_history(route: str, dialect: str | None) -> CallHistory | None:
        # On the loop's clock, as the bridge's times are (uvloop's is libuv's, in whole ms).
        return CallHistory(history, route, dialect, asyncio.get_running_loop().time) if history is not None else None
    pending: set[asyncio.Task] = set()  # shared-state writes: the audio path never awaits them

    def later(coro) -> None:
        task = asyncio.create_task(coro)
        pending.add(task)
        task.add_done_callback(pending.discard)

    control: list[CallControl] = []  # created on first use: the REST client is not free to build
    openai_sip = None  # OpenAI's SIP route, when configured: the openai package costs ~25 MB to import
    if settings.openai_webhook_secret:
        from telephony.serve.openai_sip import OpenAISipRoute

        openai_sip = OpenAISipRoute(settings, profiles.for_number, calls, metrics, transcripts, state, tool_runner,
                                    history=lambda: call_history("openai_sip", "ga"), profile_named=profiles.named)
        openai_sip.tracing = tracing

    def default_connector(s: Settings) -> Connector:
        return upstream.connector(s, dialect, profile.greeting)

    connector = (connector_factory or default_connector)(settings)
    transcription_connector = upstream.connector(settings, dialect, intent="transcription")

    def call_control() -> CallControl | None:
        if not control and settings.twilio_account_sid and settings.twilio_auth_token:
            control.append(CallControl(settings))
        return control[0] if control else None

    telnyx_control: list[telnyx_rest.TelnyxControl] = []
    telnyx_key = telnyx_rest.public_key(settings.telnyx_public_key) if settings.telnyx_public_key else None
    if not settings.telnyx_validate_signatures:
        log.warning("TELNYX_VALIDATE_SIGNATURES=false: Telnyx webhook signatures are NOT checked (for local "
                    "development only)")

    def telnyx_rest_api() -> telnyx_rest.TelnyxControl | None:
        if not telnyx_control and settings.telnyx_api_key:
            telnyx_control.append(telnyx_rest.TelnyxControl(settings))
        return telnyx_control[0] if telnyx_control else None

    signalwire_signatures = (SignalWireSignatures(settings.signalwire_signing_key)
                             if settings.signalwire_signing_key else None)
    if not settings.signalwire_validate_signatures:
        log.warning("SIGNALWIRE_VALIDATE_SIGNATURES=false: SignalWire webhook signatures are NOT checked (for "
                    "local development only)")
    signalwire_control: list[SignalWireControl] = []

    def signalwire_rest_api() -> SignalWireControl | None:
        if (not signalwire_control and settings.signalwire_project_id and settings.signalwire_token
                and settings.signalwire_space_url):
            signalwire_control.append(SignalWireControl(settings))
        return signalwire_control[0] if signalwire_control else None
    plivo_control: list[plivo_rest.PlivoControl] = []
    if not settings.plivo_validate_signatures:
        log.warning("PLIVO_VALIDATE_SIGNATURES=false: Plivo webhook signatures are NOT checked (for local "
                    "development only)")

    def plivo_transfer_url(target: str) -> str:
        return f"{settings.public_url}{plivo_wire.TRANSFER_PATH}?{urlencode({'to': target})}"

    def plivo_rest_api() -> plivo_rest.PlivoControl | None:
        if not plivo_control and settings.plivo_auth_id and settings.plivo_auth_token:
            plivo_control.append(plivo_rest.PlivoControl(
                settings, plivo_transfer_url if settings.public_url else None))
        return plivo_control[0] if plivo_control else None

    vonage_control: list[vonage_rest.VonageControl] = []
    if not settings.vonage_validate_signatures:
        log.warning("VONAGE_VALIDATE_SIGNATURES=false: Vonage webhook signatures are NOT checked (for local "
                    "development only)")

    def vonage_caller_id(call_uuid: str) -> str | None:
        """Our number on a Vonage call (a transfer's caller id): the one called, or the one calling out."""
        if (bridge := by_sid.get(call_uuid)) is None:
            return None
        parameters = bridge.call.parameters
        return parameters.get("from" if parameters.get("direction", "").startswith("outbound") else "to")

    def vonage_rest_api() -> vonage_rest.VonageControl | None:
        if not vonage_control and settings.vonage_application_id and settings.vonage_private_key:
            vonage_control.append(vonage_rest.VonageControl(settings, vonage_caller_id))
        return vonage_control[0] if vonage_control else None

    def resume_url(path: str) -> Callable[[dict[str, str], str, float], str]:
        """A carrier's answer route for a handed-over call: its parameters signed in the query, as
        an outbound call's answer URL (the route then streams with them, ``resume`` included)."""
        def url(parameters: dict[str, str], carrier_call_id: str, now: float) -> str:
            signed = outbound_signer.with_token(parameters, now, OUTBOUND_ANSWER)
            return f"{settings.public_url}{path}?{urlencode(signed)}"
        return url

    def vonage_resume(parameters: dict[str, str], call_uuid: str, now: float) -> list[dict]:
        """Vonage's transfer takes the NCCO inline (its NCCO URL is fetched unsigned by GET)."""
        return vonage_stream_ncco(settings.public_url, {**parameters, "uuid": call_uuid, "carrier": "vonage"},
                                  call_uuid, now)

    handoff = None  # calls move to another instance on shutdown: needs Redis, PUBLIC_URL and the carrier's REST API
    if state.shared and settings.public_url:
        handoff = Handoff(state, call_control, websocket_url(settings.public_url, MEDIA_STREAM_PATH), tokens,
                          transcripts, metrics, profile.fallback, settings.handoff_ttl_seconds,
                          resume_targets={"signalwire": resume_url(signalwire_wire.OUTBOUND_ANSWER_PATH),
                                          "plivo": resume_url(plivo_wire.VOICE_PATH), "vonage": vonage_resume})
        calls.hand_over = handoff.hand_over

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def signed_answer_url(req: outbound.OutboundRequest, sid: str, carrier: str, url: str) -> str | Response:
        """An outbound call's answer URL on a carrier that names the call only when it answers: our
        sid, chosen now, rides signed with the call's overrides (as Twilio's outbound answer does)."""
        signed = outbound_signer.with_token({**req.stream_parameters(), "call_sid": sid, "carrier": carrier},
                                            time.time(), OUTBOUND_ANSWER)
        answer = f"{url}?{urlencode(signed)}"
        if len(answer) > outbound.URL_LIMIT:
            return error(422, f"the call's answer URL would be {len(answer)} characters; keep it under "
                              f"{outbound.URL_LIMIT}: shorten instructions, greeting or metadata")
        return answer

    def refused_call(carrier: str, exc: CarrierError | TwilioError) -> JSONResponse:
        """A carrier's refusal to place a call, for POST /calls: its 4xx passes on (a bad number),
        except its auth errors, which are ours to fix (502, as when it cannot be reached)."""
        status = exc.status if 400 <= exc.status < 500 and exc.status not in (401, 403) else 502
        log.warning("%s refused a call: %s %s", carrier, exc.status, exc)
        return error(status, f"{carrier}: {exc}")

    def xml(text: str) -> Response:
        return Response(text, media_type="application/xml")

    def stream_url(request: Request, path: str, purpose: str, call_sid: str, now: float) -> str:
        """The URL of the stream route ``path`` Twilio is to open for this call, signed for it."""
        return signed_stream_url(websocket_url(public_base_url(request, settings), path), tokens, purpose,
                                 call_sid, now)

    def stream_twiml(request: Request, parameters: dict[str, str], path: str = MEDIA_STREAM_PATH) -> Response:
        """<Connect><Stream> to this call's signed URL (on the media route ``path``: Twilio's, or
        SignalWire's, whose cXML is the same markup), whose parameters carry a token bound to the call."""
        now = time.time()
        url = stream_url(request, path, AGENT_STREAM, parameters.get("call_sid", ""), now)
        chosen = profiles.named(parameters.get("profile", ""))
        announce = chosen.recording_announce if recorded is not None and chosen.recording_enabled else ""
        return xml(connect_stream(url, tokens.with_token(parameters, now), chosen.fallback, announce))

    async def busy(call_sid: str) -> str:
        """Why a new call is refused as busy ("" when it may come in): this instance's limits and
        draining, then the limit across instances."""
        reason = calls.accepting()
        if not reason and settings.max_total_calls and not await state.admit(call_sid, settings.max_total_calls):
            reason = f"at the limit of {settings.max_total_calls} calls across instances"
        return reason

    def profile_parameter(name: str) -> dict[str, str]:
        """The chosen profile travels with the call (signed), when there is a choice to carry."""
        return {"profile": name} if len(profiles.by_name) > 1 else {}

    # --- Twilio webhooks ---

    async def voice(request: Request) -> Response:
        form = await request.form()
        if refused := await busy(str(form.get("CallSid", ""))):
            log.warning("call %s rejected as busy: %s", form.get("CallSid", "?"), refused)
            return xml(reject_busy())
        to = str(form.get("To", ""))
        chosen = profiles.for_number(to)
        # A SIP caller's X- headers arrive as SipHeader_X-…: only those the profile lists go on.
        offered = sip.headers_from_parameters({k: str(v) for k, v in form.items()})
        return stream_twiml(request, {
            "call_sid": str(form.get("CallSid", "")), "from": str(form.get("From", "")),
            "to": to, "direction": str(form.get("Direction", "")),
            **profile_parameter(chosen.name),
            **sip.header_parameters(sip.select_headers(chosen.sip_headers, offered.items()))})

    async def outbound_answer(request: Request) -> Response:
        """An outbound call was answered: its signed overrides become the stream's parameters."""
        form = await request.form()
        overrides = dict(request.query_params)
        refused = outbound_signer.verify(overrides, None, time.time(), OUTBOUND_ANSWER)
        if refused:
            log.warning("call %s: outbound answer URL refused: %s", form.get("CallSid", "?"), refused)
            return Response(f"answer URL refused: {refused}", status_code=403)
        overrides.pop("token")
        return stream_twiml(request, {**overrides, "call_sid": str(form.get("CallSid", ""))})

    async def status_callback(request: Request) -> Response:
        # Twilio's call progress (outbound calls, and numbers set up by `configure-number`): logged.
        form = await request.form()
        status = {"status": str(form.get("CallStatus", "")), "answered_by": str(form.get("AnsweredBy", "")),
                  "duration_s": str(form.get("CallDuration", ""))}
        sid = str(form.get("CallSid", ""))
        log.info("Twilio call status %s", status["status"],
                 extra={"call_sid": sid, "event": "twilio_status", **status})
        if settings.call_records_dir is not None and sid:
            # Appended to the call's record (progress often arrives after the stream has ended).
            record = CallRecordFile(settings.call_records_dir, sid)
            record.write("twilio_status", status)
            record.close()
        return Response(status_code=204)

    async def amd_callback(request: Request) -> Response:
        form = await request.form()
        sid, answered_by = str(form.get("CallSid", "")), str(form.get("AnsweredBy", ""))
        log.info("call %s: answered by %s", sid, answered_by)
        bridge = by_sid.get(sid)
        if bridge is not None:
            bridge.dispatch(bridge.call.on_answered_by(answered_by, bridge.now()))
        elif answered_by.startswith("machine_end") and (rest := call_control()) is not None:
            # The stream is served by another worker or instance: Twilio speaks the call's own
            # voicemail (saved where every instance sees it when the call started), else the profile's.
            saved = await state.take(voicemail_key(sid)) if valid_call_sid(sid) else None
            message = saved["voicemail"] if saved is not None else profile.voicemail
            try:
                await rest.redirect(sid, say_and_hang_up(message))
            except TwilioError as exc:  # the call is over already, say: nothing to do, nothing to retry
                log.warning("call %s: voicemail redirect refused by Twilio (%s): %s", sid, exc.status, exc)
        return Response(status_code=204)

    async def transcribe_and_forward(request: Request) -> Response:
        if not settings.forward_to_number:
            return error(503, "set FORWARD_TO_NUMBER to the number calls are forwarded to")
        form = await request.form()
        parameters = {"call_sid": str(form.get("CallSid", "")), "from": str(form.get("From", "")),
                      "to": str(form.get("To", ""))}
        now = time.time()
        url = stream_url(request, TRANSCRIBE_STREAM_PATH, TRANSCRIPTION_STREAM, parameters["call_sid"], now)
        signed = tokens.with_token(parameters, now, TRANSCRIPTION_STREAM)
        return xml(fork_and_dial(url, signed, settings.forward_to_number))

    # --- Telnyx: TeXML answer, Call Control webhooks, media stream ---

    def carrier_webhook(carrier: str, variable: str, check, validate: bool, forms_only: bool = False):
        """A carrier's webhook routes: ``check(request, body)`` gives why a request is refused
        (None: signed), or is None when ``variable`` (the carrier's key) is unset; then the routes
        are off with a 503, unless ``validate`` is false (development). A refusal names no stream URL."""
        def wrap(endpoint):
            async def guarded(request: Request) -> Response:
                if check is None and validate:
                    return error(503, f"the {carrier} routes are off: set {variable}")
                body = await read_capped_body(request, WEBHOOK_BODY_LIMIT)
                if isinstance(body, Response):
                    return body
                kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if forms_only and kind not in ("", "application/x-www-form-urlencoded"):
                    return error(400, f"{carrier}'s webhooks are application/x-www-form-urlencoded")
                if check is not None and (reason := await check(request, body)):
                    log.warning("webhook %s rejected (%s) from %s", request.url.path, reason,
                                request.client.host if request.client else "?")
                    return PlainTextResponse(f"Forbidden: {reason}", status_code=403)
                return await endpoint(request)
            return guarded
        return wrap

    async def telnyx_refusal(request: Request, body: bytes) -> str | None:
        """Ed25519 over the body, or on a GET over its query (unverified: see README)."""
        query = request.url.query.encode() if request.method == "GET" else b""
        return telnyx_rest.signature_refusal(telnyx_key, request.headers, body or query, time.time())

    telnyx_signed = carrier_webhook("Telnyx", "TELNYX_PUBLIC_KEY", telnyx_refusal if telnyx_key else None,
                                    settings.telnyx_validate_signatures)

    async def telnyx_voice(request: Request) -> Response:
        form = await request.form() if request.method == "POST" else request.query_params
        call_id = str(form.get("CallSid", ""))
        if not call_id or len(call_id) > 256:
            return error(400, "CallSid (Telnyx's call_control_id) is missing or too long")
        sid = telnyx_wire.call_sid_for(call_id)
        if refused := await busy(sid):
            log.warning("Telnyx call %s rejected as busy: %s", sid, refused)
            return xml('<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>')
        to = str(form.get("To", ""))
        chosen = profiles.for_number(to)
        parameters = {"call_sid": sid, "from": str(form.get("From", "")), "to": to, "direction": "inbound",
                      "carrier": "telnyx", **profile_parameter(chosen.name)}
        now = time.time()
        url = signed_stream_url(websocket_url(public_base_url(request, settings), texml.MEDIA_STREAM_PATH),
                                tokens, AGENT_STREAM, sid, now)
        return xml(texml.connect_stream(url, tokens.with_token(parameters, now), chosen.fallback))

    async def telnyx_status(request: Request) -> Response:
        """Call Control webhooks of our outbound calls (JSON): progress is logged, AMD reaches the call."""
        try:
            event = json.loads(await request.body() or b"{}")
        except ValueError:
            return error(400, "body is not JSON")
        if not isinstance(event, dict):
            return error(400, "body must be a JSON object")
        verdict = telnyx_rest.amd_verdict(event)
        if verdict is not None:
            call_id, answered_by = verdict
            log.info("Telnyx call answered by %s", answered_by)
            if (bridge := by_sid.get(call_id)) is not None:
                bridge.dispatch(bridge.call.on_answered_by(answered_by, bridge.now()))
        return Response(status_code=204)

    # --- SignalWire: cXML (Twilio's markup), Twilio-shaped media streams, the LaML REST API ---

    async def signalwire_refusal(request: Request, body: bytes) -> str | None:
        return await signalwire_signatures.refusal(request, signed_url(request, public_base_url(request, settings)))

    signalwire_signed = carrier_webhook("SignalWire", "SIGNALWIRE_SIGNING_KEY",
                                        signalwire_refusal if signalwire_signatures else None,
                                        settings.signalwire_validate_signatures, forms_only=True)

    async def signalwire_voice(request: Request) -> Response:
        """An incoming call, or an outbound one answered (its signed overrides in the query)."""
        form = await request.form()
        call_id = str(form.get("CallSid", ""))
        if not signalwire_wire.valid_call_id(call_id):
            return error(400, "CallSid (SignalWire's call id) is missing or not an id")
        sid = signalwire_wire.call_sid_for(call_id)
        overrides: dict[str, str] = {}
        if request.url.path == signalwire_wire.OUTBOUND_ANSWER_PATH:
            overrides = dict(request.query_params)
            if refused := outbound_signer.verify(overrides, None, time.time(), OUTBOUND_ANSWER):
                log.warning("call %s: outbound answer URL refused: %s", sid, refused)
                return Response(f"answer URL refused: {refused}", status_code=403)
            overrides.pop("token")
        elif refused := await busy(sid):
            log.warning("SignalWire call %s rejected as busy: %s", sid, refused)
            return xml(reject_busy())
        to = str(form.get("To", ""))
        return stream_twiml(request, {
            "from": str(form.get("From", "")), "to": to, "direction": str(form.get("Direction", "")),
            **profile_parameter(profiles.for_number(to).name), **overrides, "call_sid": sid, "carrier": "signalwire"},
            signalwire_wire.MEDIA_STREAM_PATH)

    async def signalwire_amd(request: Request) -> Response:
        """Asynchronous AMD of an outbound call (Twilio's fields: ``AnsweredBy``; unverified)."""
        form = await request.form()
        call_id, answered_by = str(form.get("CallSid", "")), str(form.get("AnsweredBy", ""))
        log.info("SignalWire call answered by %s", answered_by)
        if (bridge := by_sid.get(call_id)) is not None:
            bridge.dispatch(bridge.call.on_answered_by(answered_by, bridge.now()))
        return Response(status_code=204)

    async def signalwire_status(request: Request) -> Response:
        form = await request.form()
        log.info("SignalWire call status %s", str(form.get("CallStatus", ""))[:32])
        return Response(status_code=204)

    async def signalwire_media_stream(ws: WebSocket) -> None:
        await serve_stream(ws, signalwire_wire.SignalWireMedia(), signalwire_rest_api())

    async def place_signalwire_call(req: outbound.OutboundRequest, base: str) -> Response:
        rest = signalwire_rest_api()
        if rest is None:
            return error(503, "SignalWire outbound calls need SIGNALWIRE_PROJECT_ID, SIGNALWIRE_TOKEN and "
                              "SIGNALWIRE_SPACE_URL")
        url = outbound.answer_url(req, base, outbound_signer, time.time(), signalwire_wire.OUTBOUND_ANSWER_PATH)
        try:
            placed = await rest.place(req.to, req.from_, url, f"{base}{signalwire_wire.STATUS_CALLBACK_PATH}",
                                      f"{base}{signalwire_wire.AMD_CALLBACK_PATH}" if req.machine_detection else None)
        except CarrierError as exc:
            return refused_call("SignalWire", exc)
        sid = signalwire_wire.call_sid_for(placed.sid)
        log.info("call %s placed on SignalWire", sid)
        return JSONResponse({"call_sid": sid, "carrier": "signalwire", "carrier_call_id": placed.sid,
                             "status": placed.status}, status_code=201)
    # --- Plivo: Plivo XML answer (inbound and outbound), status/AMD callbacks, media stream ---

    def plivo_fields(request: Request, body: bytes) -> list[tuple[str, str]]:
        """The posted form's fields (a GET carries its fields in the query, which the URL signs)."""
        form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True) if form and body else []

    async def plivo_refusal(request: Request, body: bytes) -> str | None:
        """V3 over PUBLIC_URL + path + query and the form (Plivo signs the URL it was given)."""
        url = public_base_url(request, settings) + request.url.path
        url += f"?{request.url.query}" if request.url.query else ""
        return plivo_rest.signature_refusal(settings.plivo_auth_token, request.headers, request.method, url,
                                            plivo_fields(request, body))

    plivo_guard = carrier_webhook("Plivo", "PLIVO_AUTH_TOKEN (and PLIVO_AUTH_ID)",
                                  plivo_refusal if settings.plivo_auth_token else None,
                                  settings.plivo_validate_signatures)

    def plivo_signed(endpoint):
        """Plivo's webhooks, guarded; the endpoint gets the fields (the form, or a GET's query)."""
        async def with_fields(request: Request) -> Response:
            fields = (dict(plivo_fields(request, await request.body())) if request.method == "POST"
                      else dict(request.query_params))
            return await endpoint(request, fields)
        return plivo_guard(with_fields)

    async def plivo_voice(request: Request, fields: dict[str, str]) -> Response:
        call_uuid = fields.get("CallUUID", "")
        if not call_uuid or len(call_uuid) > 128:
            return error(400, "CallUUID is missing or too long")
        signed_overrides = dict(request.query_params)
        if "token" in signed_overrides:  # our outbound call, answered: its signed overrides
            refused = outbound_signer.verify(signed_overrides, None, time.time(), OUTBOUND_ANSWER)
            if refused:
                log.warning("Plivo call: outbound answer URL refused: %s", refused)
                return Response(f"answer URL refused: {refused}", status_code=403)
            signed_overrides.pop("token")
            parameters = signed_overrides
            sid = parameters.get("call_sid", "")
        else:
            sid = plivo_wire.call_sid_for(call_uuid)
            # Plivo writes numbers as E.164 digits without the "+".
            to, from_ = (("+" + n if n.isdigit() else n) for n in (fields.get("To", ""), fields.get("From", "")))
            parameters = {"call_sid": sid, "from": from_, "to": to, "direction": "inbound", "carrier": "plivo",
                          **profile_parameter(profiles.for_number(to).name)}
        if refused := await busy(sid):
            log.warning("Plivo call %s rejected as busy: %s", sid, refused)
            return xml(plivo_wire.busy_xml())
        now = time.time()
        url = signed_stream_url(websocket_url(public_base_url(request, settings), plivo_wire.MEDIA_STREAM_PATH),
                                tokens, AGENT_STREAM, sid, now)
        url += "/" + plivo_wire.parameters_segment(tokens.with_token(parameters, now))
        return xml(plivo_wire.stream_xml(url, profiles.named(parameters.get("profile", "")).fallback))

    async def plivo_status(request: Request, fields: dict[str, str]) -> Response:
        """Plivo's hang-up, stream-status and machine-detection callbacks: logged; AMD reaches the call."""
        answered_by = plivo_rest.amd_verdict(fields)
        if answered_by is not None:
            log.info("Plivo call answered by %s", answered_by)
            if (bridge := by_sid.get(fields.get("CallUUID", ""))) is not None:
                bridge.dispatch(bridge.call.on_answered_by(answered_by, bridge.now()))
        else:
            log.info("Plivo callback %s %s", fields.get("Event", ""), fields.get("CallStatus", ""))
        return Response(status_code=204)

    async def plivo_transfer(request: Request, fields: dict[str, str]) -> Response:
        target = request.query_params.get("to", "")
        if not (outbound.E164.fullmatch(target) or (target.startswith("sip:") and len(target) < 256)):
            return error(400, "'to' must be an E.164 number or a sip: URI")
        return xml(plivo_wire.dial_xml(target))

    def parameters_in_path(ws: WebSocket) -> dict[str, str]:
        """A stream URL that carries its signed parameters past the signed segment (Plivo always,
        Vonage when they outgrow its headers): those parameters, and the signed segment left in
        place for the gate. A URL not ours gives none: its start carries no token, and the gate
        refuses it."""
        segment, _, rest = (ws.path_params.get("segment") or "").partition("/")
        ws.path_params["segment"] = segment or None
        try:
            return parameters_from_segment(rest)
        except BadStart:
            return {}

    async def plivo_media_stream(ws: WebSocket) -> None:
        await serve_stream(ws, plivo_wire.PlivoMedia(parameters_in_path(ws)), plivo_rest_api())

    async def place_plivo_call(req: outbound.OutboundRequest, base: str) -> Response:
        rest = plivo_rest_api()
        if rest is None:
            return error(503, "Plivo outbound calls need PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN")
        # Plivo names the call (CallUUID) only in the answer webhook: our sid is chosen now and
        # rides, signed with the overrides, in the answer URL (as Twilio's outbound answer does).
        sid = "CA" + uuid.uuid4().hex
        answer = signed_answer_url(req, sid, "plivo", f"{base}{plivo_wire.VOICE_PATH}")
        if isinstance(answer, Response):
            return answer
        status_url = f"{base}{plivo_wire.STATUS_PATH}"
        try:
            placed = await rest.place(req.to, req.from_, answer, status_url,
                                      status_url if req.machine_detection else None)
        except CarrierError as exc:
            return refused_call("Plivo", exc)
        log.info("call %s placed on Plivo", sid)
        return JSONResponse({"call_sid": sid, "carrier": "plivo", "carrier_request_id": placed.request_uuid,
                             "status": "queued"}, status_code=201)

    # --- Vonage: NCCO answer (inbound and outbound), event webhook, L16 16 kHz websocket ---

    async def vonage_refusal(request: Request, body: bytes) -> str | None:
        """An HS256 JWT whose payload_hash is the body's (a GET's: its query as JSON)."""
        if request.method == "GET":
            query = parse_qsl(request.url.query, keep_blank_values=True)
            return vonage_rest.signature_refusal(settings.vonage_signature_secret, request.headers,
                                                 vonage_rest.payload_of_query(query), time.time(),
                                                 hash_required=False)
        return vonage_rest.signature_refusal(settings.vonage_signature_secret, request.headers, body, time.time())

    vonage_guard = carrier_webhook("Vonage", "VONAGE_SIGNATURE_SECRET",
                                   vonage_refusal if settings.vonage_signature_secret else None,
                                   settings.vonage_validate_signatures)

    def vonage_signed(endpoint):
        """Vonage's webhooks, guarded; the endpoint gets the fields (a POST's JSON body, a GET's query)."""
        async def with_fields(request: Request) -> Response:
            if request.method == "GET":
                return await endpoint(request, dict(request.query_params))
            try:
                fields = json.loads(await request.body() or b"{}")
            except ValueError:
                return error(400, "body is not JSON")
            if not isinstance(fields, dict):
                return error(400, "body must be a JSON object")
            return await endpoint(request, fields)
        return vonage_guard(with_fields)

    async def vonage_voice(request: Request, fields: dict) -> Response:
        call_uuid = str(fields.get("uuid") or "")
        if not vonage_wire.valid_uuid(call_uuid):
            return error(400, "uuid (Vonage's call leg) is missing or not an id")
        if request.method == "POST" and "token" in request.query_params:  # our outbound call, answered
            parameters = dict(request.query_params)
            if refused := outbound_signer.verify(parameters, None, time.time(), OUTBOUND_ANSWER):
                log.warning("Vonage call: outbound answer URL refused: %s", refused)
                return Response(f"answer URL refused: {refused}", status_code=403)
            parameters.pop("token")
            parameters["uuid"] = call_uuid
            sid = parameters.get("call_sid", "")
        else:
            sid = vonage_wire.call_sid_for(call_uuid)
            # Vonage writes numbers as E.164 digits without the "+".
            to, from_ = (("+" + n if n.isdigit() else n) for n in (str(fields.get("to") or ""),
                                                                   str(fields.get("from") or "")))
            chosen = profiles.for_number(to)
            offered = sip.headers_from_parameters({str(k): str(v) for k, v in fields.items()})
            parameters = {"call_sid": sid, "uuid": call_uuid, "from": from_, "to": to, "direction": "inbound",
                          "carrier": "vonage", **profile_parameter(chosen.name),
                          **sip.header_parameters(sip.select_headers(chosen.sip_headers, offered.items()))}
        if refused := await busy(sid):
            log.warning("Vonage call %s rejected as busy: %s", sid, refused)
            return JSONResponse(vonage_wire.busy_ncco())
        return JSONResponse(vonage_stream_ncco(public_base_url(request, settings), parameters, call_uuid, time.time()))

    def vonage_stream_ncco(base: str, parameters: dict[str, str], call_uuid: str, now: float) -> list[dict]:
        """The NCCO that streams a Vonage call to us, its parameters signed in the headers."""
        uri = signed_stream_url(websocket_url(base, vonage_wire.MEDIA_STREAM_PATH), tokens, AGENT_STREAM,
                                parameters["call_sid"], now)
        signed_parameters = tokens.with_token(parameters, now)
        if vonage_wire.headers_fit(signed_parameters):
            headers = signed_parameters
        else:  # over the headers' 512 bytes (an outbound call's instructions): in the URL, as on Plivo
            uri += "/" + parameters_segment(signed_parameters)
            headers = {"uuid": call_uuid}
        fallback = profiles.named(parameters.get("profile", "")).fallback
        return vonage_wire.connect_ncco(uri, headers, f"{base}{vonage_wire.EVENT_PATH}", fallback)

    async def vonage_event(request: Request, fields: dict) -> Response:
        """Call progress, AMD and the websocket's own events: logged; AMD reaches the call."""
        verdict = vonage_rest.amd_verdict(fields)
        if verdict is not None:
            call_uuid, answered_by = verdict
            log.info("Vonage call answered by %s", answered_by)
            if (bridge := by_sid.get(call_uuid)) is not None:
                bridge.dispatch(bridge.call.on_answered_by(answered_by, bridge.now()))
        else:
            log.info("Vonage event %s", str(fields.get("status", ""))[:32])
        return Response(status_code=204)

    async def vonage_media_stream(ws: WebSocket) -> None:
        await serve_stream(ws, vonage_wire.VonageMedia(parameters_in_path(ws)), vonage_rest_api())

    async def place_vonage_call(req: outbound.OutboundRequest, base: str) -> Response:
        rest = vonage_rest_api()
        if rest is None:
            return error(503, "Vonage outbound calls need VONAGE_APPLICATION_ID and VONAGE_PRIVATE_KEY")
        # Vonage names the call (its uuid) in the answer webhook: our sid is chosen now and rides,
        # signed with the overrides, in the answer URL (as Twilio's outbound answer does).
        sid = "CA" + uuid.uuid4().hex
        answer = signed_answer_url(req, sid, "vonage", f"{base}{vonage_wire.VOICE_PATH}")
        if isinstance(answer, Response):
            return answer
        try:
            placed = await rest.place(req.to, req.from_, answer, f"{base}{vonage_wire.EVENT_PATH}",
                                      req.machine_detection)
        except CarrierError as exc:
            return refused_call("Vonage", exc)
        log.info("call %s placed on Vonage", sid)
        return JSONResponse({"call_sid": sid, "carrier": "vonage", "carrier_call_id": placed.uuid,
                             "status": placed.status}, status_code=201)

    async def telnyx_media_stream(ws: WebSocket) -> None:
        await serve_stream(ws, telnyx_wire.TelnyxMedia(), telnyx_rest_api())

    async def place_telnyx_call(req: outbound.OutboundRequest, base: str) -> Response:
        rest = telnyx_rest_api()
        if rest is None or not settings.telnyx_connection_id:
            return error(503, "Telnyx outbound calls need TELNYX_API_KEY and TELNYX_CONNECTION_ID")
        # Telnyx names the call only once it is created, and opens the stream with no TeXML: our
        # sid is chosen now, the stream URL and parameters (client_state) signed for it, good
        # while the call rings (as Twilio's answer URL is).
        sid, now = "CA" + uuid.uuid4().hex, time.time()
        parameters = {**req.stream_parameters(), "call_sid": sid, "carrier": "telnyx"}
        url = signed_stream_url(websocket_url(base, texml.MEDIA_STREAM_PATH), outbound_signer, AGENT_STREAM, sid, now)
        state_text = telnyx_wire.client_state(outbound_signer.with_token(parameters, now))
        try:
            placed = await rest.place(req.to, req.from_, url, state_text, f"{base}{texml.STATUS_PATH}",
                                      req.machine_detection)
        except CarrierError as exc:
            return refused_call("Telnyx", exc)
        log.info("call %s placed on Telnyx", sid)
        return JSONResponse({"call_sid": sid, "carrier": "telnyx", "carrier_call_id": placed.call_control_id,
                             "status": "queued"}, status_code=201)

    # --- Media streams ---

    async def media_stream(ws: WebSocket) -> None:
        await serve_stream(ws, TWILIO_MEDIA, call_control())

    async def serve_stream(ws: WebSocket, wire: MediaWire, control: CarrierControl | None) -> None:
        """One agent call on any carrier's media websocket: ``wire`` reads its frames into the
        core's neutral events, ``control`` is its REST API (hang-up, transfer)."""
        log_ids = logs.bind_call()
        if (start := await gate.admit(ws, AGENT_STREAM, ws.path_params.get("segment"), wire)) is None:
            return
        call = Call(profile, settings.audio_codec, media_timeout_s=settings.media_timeout_seconds,
                    pick_profile=profiles.named, capabilities=dialect.capabilities, model=settings.realtime_model,
                    delegation_model=settings.live_delegation_model)
        observer = CallObserver(metrics, settings.call_records_dir, log_ids, route=wire.carrier,
                                history=call_history(wire.carrier, settings.realtime_dialect),
                                trace=tracing.call(wire.carrier) if tracing else None)

        def on_record(call: Call, record: Record) -> None:
            observer.on_record(call, record)  # metrics, call record file, structured log
            if record.kind == "start":  # the call sid is known from here on
                by_sid[call.call_sid] = bridge
                if start.carrier_call_id:  # the carrier's AMD verdicts name its own id
                    by_sid[start.carrier_call_id] = bridge
                transcripts.begin(call.call_sid)
                later(state.put_call(call.call_sid, call_entry(call.parameters)))
                if state.shared and call.parameters.get("direction", "").startswith("outbound"):
                    # Twilio's AMD verdict may reach another instance: it finds this call's voicemail.
                    voicemail = call.parameters.get("voicemail") or call.profile.voicemail
                    later(state.put(voicemail_key(call.call_sid), {"voicemail": voicemail}, VOICEMAIL_TTL_S))
            elif record.kind == "transcript":
                transcripts.publish(call.call_sid, record.data)

        bridge = Bridge(ws, call, dialect, connector, on_record=on_record, call_control=control,
                        max_message_bytes=settings.max_message_bytes, observer=observer, tools=tool_runner,
                        prepare=handoff.resume if handoff else None,
                        release_stream=lambda: gate.release(start, AGENT_STREAM), recordings=recorded,
                        wire=wire, carrier_call_id=start.carrier_call_id)
        active.add(call)
        calls.add(bridge)
        try:
            bridge.dispatch(call.on_twilio(start, bridge.now()))
            await bridge.run()
        finally:
            # A handoff under way decides how this stream's record ends: wait for it (bounded).
            handed_over = await bridge.handoff_settled()
            active.discard(call)
            calls.discard(bridge)
            observer.close()
            for key in (call.call_sid, start.carrier_call_id):
                if key and by_sid.get(key) is bridge:
                    del by_sid[key]
            if call.call_sid:  # a handed-over call goes on elsewhere: its feed and entry stay
                transcripts.end(call.call_sid, handed_over=handed_over)
                later(state.drop_call(call.call_sid, handed_over=handed_over))
            await gate.release(start, AGENT_STREAM)
            logs.report_repeats()

    async def transcribe_stream(ws: WebSocket) -> None:
        logs.bind_call()
        if not settings.forward_to_number:
            stream_refused(TRANSCRIPTION_STREAM, ROUTE_OFF)
            await ws.close(1008)  # no TwiML of ours starts this stream: refused at the handshake
            return
        if (start := await gate.admit(ws, TRANSCRIPTION_STREAM, ws.path_params.get("segment"))) is None:
            return
        if busy := calls.accepting():
            log.warning("call %s: transcription stream refused: %s", start.call_sid, busy)
            stream_refused(TRANSCRIPTION_STREAM, BUSY)
            await ws.close(1013)
            await gate.release(start, TRANSCRIPTION_STREAM)
            return
        core = ForkTranscription(profile, settings.audio_codec)
        record_file: list[CallRecordFile] = []  # opened once the call sid is known
        fork_history = call_history("transcription", settings.realtime_dialect)

        def on_record(record: Record) -> None:
            if record.kind == "start":
                transcripts.begin(core.call_sid)
                if settings.call_records_dir is not None:
                    record_file.append(CallRecordFile(settings.call_records_dir, core.call_sid))
                if fork_history is not None:
                    fork_history.start(core.call_sid, record.data.get("stream_sid"), start.custom_parameters,
                                       profile.name)
            else:
                if record.kind == "transcript":
                    transcripts.publish(core.call_sid, record.data)
                if fork_history is not None:
                    fork_history.record(record.kind, record.data)
            for file in record_file:
                file.write(record.kind, record.data)

        fork = ForkBridge(ws, core, dialect, transcription_connector, on_record)
        calls.add(fork)
        try:
            await fork.run(start)
        finally:
            calls.discard(fork)
            if core.call_sid:
                transcripts.end(core.call_sid)
            for file in record_file:
                file.write("end", {"kind": "transcription"})
                file.close()
            if fork_history is not None:
                fork_history.record("end", {"reason": "transcription stream ended", "abnormal": False})
            await gate.release(start, TRANSCRIPTION_STREAM)
            logs.report_repeats()

    # --- The calls API ---

    def api_refusal(request: Request, session_ok: bool = False) -> Response | None:
        """The calls API's bearer-token check; None when the request may go on. ``session_ok``:
        a read-only endpoint, which the dashboard's session cookie also opens (never a POST: a
        cookie is sent by the browser on its own, the bearer header only by who holds the token)."""
        if not settings.calls_api_token:
            return error(503, "the calls API is disabled: set CALLS_API_TOKEN")
        if session_ok and dashboard.signed_in(request):
            return None
        given = request.headers.get("authorization", "")
        expected = f"Bearer {settings.calls_api_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error(401, "missing or wrong bearer token")
        return None

    async def place_call(request: Request) -> Response:
        if (refusal := api_refusal(request)) is not None:
            return refusal
        if not settings.public_url:  # else the request's Host would name where the account's calls go
            return error(503, "outbound calls need PUBLIC_URL (this service's public https URL)")
        try:
            req = outbound.parse_request(await request.body(), settings.twilio_from_number, profiles.by_name)
            if not req.profile and len(profiles.by_name) > 1:  # our number's profile answers for it
                req = replace(req, profile=profiles.for_number(req.from_).name)
            base = public_base_url(request, settings)
            if req.carrier == "telnyx":
                return await place_telnyx_call(req, base)
            if req.carrier == "signalwire":
                return await place_signalwire_call(req, base)
            if req.carrier == "plivo":
                return await place_plivo_call(req, base)
            if req.carrier == "vonage":
                return await place_vonage_call(req, base)
            url = outbound.answer_url(req, base, outbound_signer, time.time())
        except RequestError as exc:
            return error(exc.status, str(exc))
        rest = call_control()
        if rest is None:
            return error(503, "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        try:
            placed = await outbound.place(rest, req, base, url)
        except TwilioError as exc:
            return refused_call("Twilio", exc)
        log.info("call %s placed", placed.sid)  # not its number: README, Logs
        return JSONResponse({"call_sid": placed.sid, "status": placed.status}, status_code=201)

    async def list_calls(request: Request) -> Response:
        if (refusal := api_refusal(request, session_ok=True)) is not None:
            return refusal
        wanted = request.query_params.get("state", "live")
        if wanted == "ended":  # the history, newest first, paged
            return await history_api.ended(request)
        if wanted != "live":
            return error(400, "state must be live (the calls in progress, the default) or ended (the history)")
        return JSONResponse({"calls": await state.list_calls()})

    async def call_detail(request: Request) -> Response:
        if (refusal := api_refusal(request, session_ok=True)) is not None:
            return refusal
        return await history_api.call(request)

    async def call_recording(request: Request) -> Response:
        if (refusal := api_refusal(request, session_ok=True)) is not None:
            return refusal
        sid = request.path_params["call_sid"]
        if recorded is None:
            return error(404, "recordings are off: set RECORDINGS_URL")
        if not valid_call_sid(sid):
            return error(400, "not a call sid")
        part = request.query_params.get("part", "1")
        if not part.isdigit():
            return error(400, "part must be a whole number (1: the first)")
        try:
            return await recordings.recording_response(recorded.store, sid, int(part), request.headers.get("range"))
        except Exception as exc:  # the store is down: say so, never with its credentials
            log.warning("call %s: recording not read: %s", sid, type(exc).__name__)
            return error(502, f"the recordings store did not answer ({type(exc).__name__})")

    async def transcript_feed(request: Request) -> Response:
        if (refusal := api_refusal(request, session_ok=True)) is not None:
            return refusal
        sid = request.path_params["call_sid"]
        if not await transcripts.followable(sid):
            where = "on any instance" if state.shared else "on this instance"
            return error(404, f"call {sid} is not in progress {where}")

        async def events():
            async for turn in transcripts.follow(sid):
                yield f"event: transcript\ndata: {json.dumps(turn)}\n\n"
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- The dashboard: the same reads, for a signed-in browser ---

    async def history_page(limit: int, before) -> list | str:
        if history is None:
            return "the call history is off (CALL_HISTORY=false)"
        return await history.read(lambda connection: history_reader.ended_calls(connection, limit, before))

    async def history_call(call_sid: str):
        if history is None:
            return "the call history is off (CALL_HISTORY=false)"
        return await history.read(lambda connection: history_reader.call_detail(connection, call_sid))

    async def recording_parts(call_sid: str) -> int:
        if recorded is None or not valid_call_sid(call_sid):
            return 0
        return len(await recorded.store.list(call_sid))

    dashboard = Dashboard(settings.calls_api_token, settings.dashboard_session_hours,
                          DashboardSources(state.list_calls, history_page, history_call, recording_parts),
                          public_https=str(settings.public_url or "").startswith("https://"))

    async def openai_sip_off(request: Request) -> Response:
        return error(503, "OpenAI's SIP route is off: set OPENAI_WEBHOOK_SECRET")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "draining" if calls.draining else "ok", "active_calls": len(active)})

    async def metrics_endpoint(request: Request) -> Response:
        if settings.metrics_token and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), f"Bearer {settings.metrics_token}".encode()):
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if openai_sip is not None:
            openai_sip.start_adopting()  # SIP calls a stopped instance left (this one, before a restart)
        yield
        # The calls have ended (GracefulServer drained them first): what they left queued is sent
        # now, bounded, inside the platform's kill timeout (Heroku: SIGKILL 30 s after SIGTERM,
        # of which SHUTDOWN_GRACE_SECONDS is the calls' share).
        budget_end = time.monotonic() + settings.shutdown_flush_seconds
        # The last spans export in the SDK's thread meanwhile, bounded by the same budget.
        traced = asyncio.create_task(tracing.shutdown(settings.shutdown_flush_seconds)) if tracing else None
        await transcripts.drain(settings.shutdown_flush_seconds)
        await state.flush(max(0.0, budget_end - time.monotonic()))
        if history is not None:
            await history.flush(max(0.0, budget_end - time.monotonic()))
            await history.close()
        if traced is not None:
            await traced
        await transcripts.close()
        await tool_runner.aclose()
        await state.close()
        for rest in [*control, *telnyx_control, *signalwire_control, *plivo_control, *vonage_control]:
            await rest.aclose()

    app = Starlette(lifespan=lifespan, routes=[
        Route(VOICE_PATH, signed(voice), methods=["POST"]),
        Route(OUTBOUND_ANSWER_PATH, signed(outbound_answer), methods=["POST"]),
        Route(STATUS_CALLBACK_PATH, signed(status_callback), methods=["POST"]),
        Route(AMD_CALLBACK_PATH, signed(amd_callback), methods=["POST"]),
        Route(TRANSCRIBE_AND_FORWARD_PATH, signed(transcribe_and_forward), methods=["POST"]),
        # The signed URL, and the bare one (refused with its reason: no TwiML of ours names it).
        WebSocketRoute(MEDIA_STREAM_PATH + "/{segment:path}", media_stream),
        WebSocketRoute(MEDIA_STREAM_PATH, media_stream),
        WebSocketRoute(TRANSCRIBE_STREAM_PATH + "/{segment:path}", transcribe_stream),
        WebSocketRoute(TRANSCRIBE_STREAM_PATH, transcribe_stream),
        Route(texml.VOICE_PATH, telnyx_signed(telnyx_voice), methods=["GET", "POST"]),
        Route(texml.STATUS_PATH, telnyx_signed(telnyx_status), methods=["POST"]),
        WebSocketRoute(texml.MEDIA_STREAM_PATH + "/{segment:path}", telnyx_media_stream),
        WebSocketRoute(texml.MEDIA_STREAM_PATH, telnyx_media_stream),
        Route(signalwire_wire.VOICE_PATH, signalwire_signed(signalwire_voice), methods=["POST"]),
        Route(signalwire_wire.OUTBOUND_ANSWER_PATH, signalwire_signed(signalwire_voice), methods=["POST"]),
        Route(signalwire_wire.AMD_CALLBACK_PATH, signalwire_signed(signalwire_amd), methods=["POST"]),
        Route(signalwire_wire.STATUS_CALLBACK_PATH, signalwire_signed(signalwire_status), methods=["POST"]),
        WebSocketRoute(signalwire_wire.MEDIA_STREAM_PATH + "/{segment:path}", signalwire_media_stream),
        WebSocketRoute(signalwire_wire.MEDIA_STREAM_PATH, signalwire_media_stream),
        Route(plivo_wire.VOICE_PATH, plivo_signed(plivo_voice), methods=["GET", "POST"]),
        Route(plivo_wire.STATUS_PATH, plivo_signed(plivo_status), methods=["GET", "POST"]),
        Route(plivo_wire.TRANSFER_PATH, plivo_signed(plivo_transfer), methods=["GET", "POST"]),
        WebSocketRoute(plivo_wire.MEDIA_STREAM_PATH + "/{segment:path}", plivo_media_stream),
        WebSocketRoute(plivo_wire.MEDIA_STREAM_PATH, plivo_media_stream),
        Route(vonage_wire.VOICE_PATH, vonage_signed(vonage_voice), methods=["GET", "POST"]),
        Route(vonage_wire.EVENT_PATH, vonage_signed(vonage_event), methods=["GET", "POST"]),
        WebSocketRoute(vonage_wire.MEDIA_STREAM_PATH + "/{segment:path}", vonage_media_stream),
        WebSocketRoute(vonage_wire.MEDIA_STREAM_PATH, vonage_media_stream),
        Route("/calls", place_call, methods=["POST"]),
        Route("/calls", list_calls, methods=["GET"]),
        Route("/calls/{call_sid}", call_detail, methods=["GET"]),
        Route("/calls/{call_sid}/transcript", transcript_feed, methods=["GET"]),
        Route("/calls/{call_sid}/recording", call_recording, methods=["GET"]),
        *(openai_sip.routes() if openai_sip else [Route(OPENAI_SIP_PATH, openai_sip_off, methods=["POST"])]),
        *dashboard.routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ])
    app.state.settings = settings
    app.state.active_calls = active
    app.state.calls = calls
    app.state.stream_tokens = tokens
    app.state.gate = gate
    app.state.transcripts = transcripts
    app.state.history = history
    app.state.shared = state
    app.state.tools = tool_runner
    app.state.metrics = metrics
    app.state.profiles = profiles
    app.state.openai_sip = openai_sip
    app.state.tracing = tracing
    return app
