"""The web app: Twilio's webhooks and media stream, and a health check. Thin by design."""

from __future__ import annotations

import logging
import time
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from . import realtime_beta, realtime_client
from .bridge import Bridge, Connector
from .call import Call
from .limits import CallRegistry
from .profile import Profile, load_profile
from .security import StreamTokens, WebhookGuard, stream_key
from .settings import Settings
from .twilio_wire import Start
from .twiml import MEDIA_STREAM_PATH, connect_stream, reject_busy, websocket_url

log = logging.getLogger("telephony.app")

DIALECTS = {"beta": realtime_beta}


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
    calls = CallRegistry(settings.max_concurrent_calls)
    signed = WebhookGuard(settings, lambda request: public_base_url(request, settings))
    tokens = StreamTokens(stream_key(settings), settings.stream_token_ttl_seconds)

    def verify_start(start: Start) -> str | None:
        return tokens.verify(start.custom_parameters, start.call_sid, time.time())

    def default_connector(s: Settings) -> Connector:
        return lambda: realtime_client.connect(s, dialect.headers)

    connector = (connector_factory or default_connector)(settings)

    async def voice(request: Request) -> Response:
        form = await request.form()
        busy = calls.accepting()
        if busy:
            log.warning("call %s rejected as busy: %s", form.get("CallSid", "?"), busy)
            return Response(reject_busy(), media_type="application/xml")
        parameters = {
            "call_sid": str(form.get("CallSid", "")),
            "from": str(form.get("From", "")),
            "to": str(form.get("To", "")),
            "direction": str(form.get("Direction", "")),
        }
        base = public_base_url(request, settings)
        parameters = tokens.with_token(parameters, time.time())  # the stream proves it came from here
        xml = connect_stream(websocket_url(base, MEDIA_STREAM_PATH), parameters, profile.fallback)
        return Response(xml, media_type="application/xml")

    async def media_stream(ws: WebSocket) -> None:
        await ws.accept()
        call = Call(profile, settings.audio_codec, verify_start=verify_start,
                    media_timeout_s=settings.media_timeout_seconds)
        bridge = Bridge(ws, call, dialect, connector, max_message_bytes=settings.max_message_bytes)
        active.add(call)
        calls.add(bridge)
        try:
            await bridge.run()
        finally:
            active.discard(call)
            calls.discard(bridge)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "draining" if calls.draining else "ok", "active_calls": len(active)})

    app = Starlette(routes=[
        Route("/twilio/voice", signed(voice), methods=["POST"]),
        WebSocketRoute(MEDIA_STREAM_PATH, media_stream),
        Route("/healthz", healthz, methods=["GET"]),
    ])
    app.state.settings = settings
    app.state.active_calls = active
    app.state.calls = calls
    app.state.stream_tokens = tokens
    return app
