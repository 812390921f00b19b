"""The web app: Twilio's webhooks and media stream, and a health check. Thin by design."""

from __future__ import annotations

import hmac
import logging
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from . import logs, realtime_beta, realtime_client, realtime_ga
from .bridge import Bridge, Connector
from .call import Call
from .metrics import CONTENT_TYPE, Metrics
from .profile import Profile, load_profile
from .settings import Settings
from .telemetry import CallObserver
from .twiml import MEDIA_STREAM_PATH, connect_stream, websocket_url

log = logging.getLogger("telephony.app")

DIALECTS = {"beta": realtime_beta, "ga": realtime_ga}
VOICE_PATH = "/twilio/voice"
STATUS_CALLBACK_PATH = "/twilio/status"


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
    metrics = Metrics()

    def default_connector(s: Settings) -> Connector:
        return lambda: realtime_client.connect(s, dialect.headers)

    connector = (connector_factory or default_connector)(settings)

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
        observer = CallObserver(metrics, settings.call_records_dir, logs.bind_call())
        active.add(call)
        try:
            await Bridge(ws, call, dialect, connector, on_record=observer.on_record, observer=observer).run()
        finally:
            active.discard(call)
            observer.close()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "active_calls": len(active)})

    async def metrics_endpoint(request: Request) -> Response:
        if settings.metrics_token and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), f"Bearer {settings.metrics_token}".encode()):
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def status_callback(request: Request) -> Response:
        # Twilio's call status callback (set by `telephony configure-number`): logged, not acted on.
        form = await request.form()
        log.info("Twilio call status %s", form.get("CallStatus"),
                 extra={"call_sid": str(form.get("CallSid", "")), "event": "twilio_status",
                        "status": str(form.get("CallStatus", "")),
                        "duration_s": str(form.get("CallDuration", ""))})
        return Response(status_code=204)

    app = Starlette(routes=[
        Route(VOICE_PATH, voice, methods=["POST"]),
        WebSocketRoute(MEDIA_STREAM_PATH, media_stream),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(STATUS_CALLBACK_PATH, status_callback, methods=["POST"]),
    ])
    app.state.settings = settings
    app.state.active_calls = active
    app.state.metrics = metrics
    return app
