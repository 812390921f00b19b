"""The web app: Twilio's webhooks and media stream, and a health check. Thin by design."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from . import outbound, realtime_beta, realtime_client, realtime_ga
from .bridge import Bridge, Connector
from .actions import Record
from .call import Call
from .outbound import RequestError
from .profile import Profile, load_profile
from .settings import Settings
from .twilio_rest import CallControl, TwilioError
from .fork import ForkBridge, ForkTranscription
from .transcripts import TranscriptHub
from .twiml import (MEDIA_STREAM_PATH, TRANSCRIBE_STREAM_PATH, connect_stream, fork_and_dial,
                    say_and_hang_up, websocket_url)

log = logging.getLogger("telephony.app")

DIALECTS = {"beta": realtime_beta, "ga": realtime_ga}


def public_base_url(request: Request, settings: Settings) -> str:
    """The URL Twilio used to reach us: PUBLIC_URL, else rebuilt from the proxy's headers."""
    if settings.public_url:
        return settings.public_url
    headers = request.headers
    proto = (headers.get("x-forwarded-proto") or request.url.scheme).split(",")[0].strip()
    host = (headers.get("x-forwarded-host") or headers.get("host") or request.url.netloc).split(",")[0].strip()
    return f"{proto}://{host}"


def create_app(settings: Settings | None = None, profile: Profile | None = None,
               connector_factory: Callable[[Settings], Connector] | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    profile = profile or load_profile(settings.profile_path())
    dialect = DIALECTS[settings.realtime_dialect]
    active: set[Call] = set()

    def default_connector(s: Settings, intent: str | None = None) -> Connector:
        if s.realtime_url == "local":  # the offline engine, in this process (no socket, no key)
            from .local_realtime import local_connector
            return local_connector(greeting=profile.greeting, dialect=s.realtime_dialect,
                                   transcription=intent == "transcription")
        return lambda: realtime_client.connect(s, dialect.headers, intent=intent)

    connector = (connector_factory or default_connector)(settings)
    transcription_connector = default_connector(settings, intent="transcription")
    by_sid: dict[str, Bridge] = {}  # calls streaming through this instance, for AMD verdicts
    transcripts = TranscriptHub(settings.transcript_webhook_url)
    control: list[CallControl] = []  # created on first use: the REST client is not free to build

    def call_control() -> CallControl | None:
        if not control and settings.twilio_account_sid and settings.twilio_auth_token:
            control.append(CallControl(settings))
        return control[0] if control else None

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def api_refusal(request: Request) -> Response | None:
        """The /calls API's bearer-token check; None when the request may go on."""
        if not settings.calls_api_token:
            return error(503, "the calls API is disabled: set CALLS_API_TOKEN")
        given = request.headers.get("authorization", "")
        expected = f"Bearer {settings.calls_api_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error(401, "missing or wrong bearer token")
        return None

    async def place_call(request: Request) -> Response:
        if (refusal := api_refusal(request)) is not None:
            return refusal
        try:
            req = outbound.parse_request(await request.body(), settings.twilio_from_number)
            base = public_base_url(request, settings)
            xml = outbound.call_twiml(req, base, profile.fallback)
        except RequestError as exc:
            return error(exc.status, str(exc))
        rest = call_control()
        if rest is None:
            return error(503, "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        try:
            placed = await asyncio.to_thread(outbound.place, rest, req, base, xml)
        except TwilioError as exc:
            status = exc.status if 400 <= exc.status < 500 and exc.status not in (401, 403) else 502
            log.warning("Twilio refused a call to %s: %s %s", req.to, exc.status, exc)
            return error(status, f"Twilio: {exc}")
        log.info("call %s placed to %s", placed.sid, req.to)
        return JSONResponse({"call_sid": placed.sid, "status": placed.status}, status_code=201)

    async def status_callback(request: Request) -> Response:
        form = await request.form()
        log.info("call %s: status %s%s", form.get("CallSid", "?"), form.get("CallStatus", "?"),
                 f" (answered by {form['AnsweredBy']})" if form.get("AnsweredBy") else "")
        return Response(status_code=204)

    async def amd_callback(request: Request) -> Response:
        form = await request.form()
        sid, answered_by = str(form.get("CallSid", "")), str(form.get("AnsweredBy", ""))
        log.info("call %s: answered by %s", sid, answered_by)
        bridge = by_sid.get(sid)
        if bridge is not None:
            bridge.dispatch(bridge.call.on_answered_by(answered_by, bridge.now()))
        elif answered_by.startswith("machine_end") and (rest := call_control()) is not None:
            # The stream is served by another instance: Twilio speaks the voicemail itself.
            await asyncio.to_thread(rest.redirect, sid, say_and_hang_up(profile.voicemail))
        return Response(status_code=204)

    async def voice(request: Request) -> Response:
        form = await request.form()
        parameters = {
            "call_sid": str(form.get("CallSid", "")),
            "from": str(form.get("From", "")),
            "to": str(form.get("To", "")),
            "direction": str(form.get("Direction", "")),
        }
        base = public_base_url(request, settings)
        xml = connect_stream(websocket_url(base, MEDIA_STREAM_PATH), parameters, profile.fallback)
        return Response(xml, media_type="application/xml")

    async def media_stream(ws: WebSocket) -> None:
        await ws.accept()
        call = Call(profile, settings.audio_codec)
        active.add(call)

        def on_record(call: Call, record: Record) -> None:
            if record.kind == "start":  # the call sid is known from here on
                by_sid[call.call_sid] = bridge
                transcripts.begin(call.call_sid)
            elif record.kind == "transcript":
                transcripts.publish(call.call_sid, record.data)

        bridge = Bridge(ws, call, dialect, connector, on_record=on_record, call_control=call_control())
        try:
            await bridge.run()
        finally:
            active.discard(call)
            if call.call_sid and by_sid.get(call.call_sid) is bridge:
                del by_sid[call.call_sid]
            if call.call_sid:
                transcripts.end(call.call_sid)

    async def transcribe_and_forward(request: Request) -> Response:
        if not settings.forward_to_number:
            return error(503, "set FORWARD_TO_NUMBER to the number calls are forwarded to")
        form = await request.form()
        parameters = {"call_sid": str(form.get("CallSid", "")), "from": str(form.get("From", "")),
                      "to": str(form.get("To", ""))}
        url = websocket_url(public_base_url(request, settings), TRANSCRIBE_STREAM_PATH)
        return Response(fork_and_dial(url, parameters, settings.forward_to_number),
                        media_type="application/xml")

    async def transcribe_stream(ws: WebSocket) -> None:
        await ws.accept()
        core = ForkTranscription(profile, settings.audio_codec)

        def on_record(record: Record) -> None:
            if record.kind == "start":
                transcripts.begin(core.call_sid)
            elif record.kind == "transcript":
                transcripts.publish(core.call_sid, record.data)

        try:
            await ForkBridge(ws, core, dialect, transcription_connector, on_record).run()
        finally:
            if core.call_sid:
                transcripts.end(core.call_sid)

    async def transcript_feed(request: Request) -> Response:
        if (refusal := api_refusal(request)) is not None:
            return refusal
        sid = request.path_params["call_sid"]
        if not transcripts.active(sid):
            return error(404, f"call {sid} is not in progress on this instance")

        async def events():
            async for turn in transcripts.follow(sid):
                yield f"event: transcript\ndata: {json.dumps(turn)}\n\n"
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "active_calls": len(active)})

    app = Starlette(routes=[
        Route("/twilio/voice", voice, methods=["POST"]),
        Route("/twilio/status", status_callback, methods=["POST"]),
        Route("/twilio/amd", amd_callback, methods=["POST"]),
        Route("/calls", place_call, methods=["POST"]),
        Route("/calls/{call_sid}/transcript", transcript_feed, methods=["GET"]),
        Route("/twilio/transcribe-and-forward", transcribe_and_forward, methods=["POST"]),
        WebSocketRoute(TRANSCRIBE_STREAM_PATH, transcribe_stream),
        WebSocketRoute(MEDIA_STREAM_PATH, media_stream),
        Route("/healthz", healthz, methods=["GET"]),
    ])
    app.state.settings = settings
    app.state.transcripts = transcripts
    app.state.active_calls = active
    return app
