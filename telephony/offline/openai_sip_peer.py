"""OpenAI's side of the SIP route, offline: a whole SIP call without OpenAI or a phone.

``OpenAISipPeer`` is an HTTP and websocket server on loopback that behaves as OpenAI does for
a SIP call: it sends the signed ``realtime.call.incoming`` webhook to a running service, serves
``/v1/realtime/calls/{id}/accept|reject|refer|hangup`` and the sideband websocket
(``/v1/realtime?call_id=…``), and plays the call itself: the local Realtime engine answers, the
caller's recording goes in at real time, the agent's audio comes out of a "phone line" that
reports ``output_audio_buffer.started/stopped/cleared`` on the sideband (no audio deltas go
there, as on OpenAI's), and both sides are kept for a stereo WAV. Point the service at it with
``OPENAI_BASE_URL=peer.base_url`` and the same ``OPENAI_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from telephony.offline.local_engine import EngineConfig, Persona, RealtimeEngine
from telephony.offline.local_realtime import EngineRunner
from telephony.offline.openai_side import (  # noqa: F401 - sign_webhook, new_webhook_secret: used from here too
    FRAME_BYTES,
    LoopbackServer,
    deliver,
    new_webhook_secret,
    run_line,
    sign_webhook,
)
from telephony.serve.direct_lane import DIRECT_LANE, DirectWebSocketProtocol

log = logging.getLogger("telephony.openai_sip_peer")

_LINE_FORMAT = {"type": "audio/pcmu"}  # the SIP leg is G.711 μ-law


def incoming_call_event(call_id: str, sip_headers: list[dict[str, str]], event_id: str | None = None) -> bytes:
    return json.dumps({"object": "event", "id": event_id or "evt_" + uuid.uuid4().hex,
                       "type": "realtime.call.incoming", "created_at": int(time.time()),
                       "data": {"call_id": call_id, "sip_headers": sip_headers}}).encode()


@dataclass
class PeerCall:
    """One SIP call as OpenAI's side saw it; the tests read these."""

    call_id: str
    sip_headers: list[dict[str, str]]
    webhook_status: int | None = None
    accepted: dict[str, Any] | None = None  # the accept body
    accepts: int = 0
    rejected: int | None = None  # the SIP status it was rejected with
    referred_to: list[str] = field(default_factory=list)
    hung_up_at: float | None = None  # loop time of the hang-up request
    received: list[dict[str, Any]] = field(default_factory=list)  # client events on the sideband
    received_on: list[int] = field(default_factory=list)  # which sideband (1, 2, …) each arrived on
    sidebands: int = 0  # sideband connections accepted
    sidebands_refused: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)  # server events on the sideband
    timeline: list[tuple[float, str, str]] = field(default_factory=list)  # (loop time, event, response)
    sideband_headers: dict[str, str] = field(default_factory=dict)
    caller: bytearray = field(default_factory=bytearray)  # what the caller said, μ-law, from accept on
    agent: bytearray = field(default_factory=bytearray)  # what the caller heard
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]

    def when(self, kind: str) -> list[float]:
        return [t for t, k, _ in self.timeline if k == kind]


class PhoneLine:
    """An accepted call: the engine, the caller's audio in, the agent's audio out at real time."""

    def __init__(self, peer: "OpenAISipPeer", call: PeerCall) -> None:
        self.peer, self.call = peer, call
        self._loop = asyncio.get_running_loop()
        self.engine = RealtimeEngine(peer.persona, replace(peer.engine_config, dialect="ga"),
                                     f"sess_{call.call_id}")
        session = dict(call.accepted or {})
        audio = session.get("audio") or {}
        session["audio"] = {"input": {**(audio.get("input") or {}), "format": _LINE_FORMAT},
                            "output": {**(audio.get("output") or {}), "format": _LINE_FORMAT}}
        self.engine.receive(json.dumps({"type": "session.update", "session": session}), self._loop.time())
        self._outbox: list[str] = []  # sideband events waiting for the sideband to connect
        self._ws: WebSocket | None = None
        self._playout = bytearray()  # agent audio not yet played
        self._playing: str | None = None  # response id being heard
        self._latest: str = ""  # the response whose audio arrived last
        self._producing: set[str] = set()  # responses still making audio
        self.runner = EngineRunner(self.engine, self._from_engine)
        self._task = asyncio.create_task(self._run())

    # --- The engine's events: audio to the line, the rest to the sideband ---

    def _from_engine(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind == "response.output_audio.delta":
            self._playout += base64.b64decode(event["delta"])
            self._latest = event.get("response_id", "")
            return  # OpenAI sends no audio deltas on the sideband
        if kind == "response.created":
            self._producing.add(event["response"]["id"])
        elif kind == "response.done":
            self._producing.discard(event["response"]["id"])
        elif kind == "input_audio_buffer.speech_started" and self._playing and self.engine.config.interrupt is not False:
            self._cut_playout()
        self.send(event)

    def _cut_playout(self) -> None:
        """Barge-in: the line stops playing at once; the server knows what was heard."""
        self._playout.clear()
        self.send({"type": "output_audio_buffer.cleared", "event_id": _event_id(), "response_id": self._playing})
        self._playing = None

    def send(self, event: dict[str, Any]) -> None:
        self.call.sent.append(event)
        self.call.timeline.append((self._loop.time(), event.get("type", ""), event.get("response_id", "")))
        text = json.dumps(event)
        if self._ws is None:
            self._outbox.append(text)
        else:
            self._loop.create_task(self._send(text))

    async def _send(self, text: str) -> None:
        with contextlib.suppress(Exception):
            await self._ws.send_text(text)

    # --- The sideband ---

    async def attach(self, ws: WebSocket) -> None:
        self.call.sidebands += 1
        number = self.call.sidebands
        self.call.timeline.append((self._loop.time(), "sideband_opened", ""))
        self._ws = ws
        for text in (*self.peer.inject, *self._outbox):
            await ws.send_text(text)
        self._outbox.clear()
        try:
            while True:
                text = await ws.receive_text()
                with contextlib.suppress(ValueError):
                    self.call.received.append(json.loads(text))
                    self.call.received_on.append(number)
                self.runner.feed(text)
        except WebSocketDisconnect:
            pass
        finally:
            # Closing a sideband detaches only that observer: the call goes on, and another may attach.
            self.call.timeline.append((self._loop.time(), "sideband_closed", ""))
            if self._ws is ws:
                self._ws = None

    async def drop_sideband(self, code: int | None) -> None:
        """The sideband fails while the call goes on: the connection is cut without a close frame
        (``code`` None), or closed with ``code`` (not 1000, which says the call ended). What the
        line says meanwhile waits for the next sideband, as OpenAI's session does."""
        ws, self._ws = self._ws, None
        self.call.timeline.append((self._loop.time(), "sideband_dropped", ""))
        if ws is None:
            return
        with contextlib.suppress(Exception):
            if code is None:
                ws.scope["extensions"][DIRECT_LANE].abort()
            else:
                await ws.close(code)

    # --- The line's clock: 20 ms frames each way ---

    async def _run(self) -> None:
        peer = self.peer
        await run_line(peer.caller_audio, peer.dtmf, peer.listen_s, self.call.ended, self.call.caller,
                       self.call.agent, hear=self._hear, press=self._press, play=self._play_frame)
        self.end("the caller hung up")

    def _hear(self, frame: bytes, n: int) -> None:
        self.runner.feed(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}))

    def _press(self, digit: str) -> None:
        self.send({"type": "input_audio_buffer.dtmf_event_received", "event": digit, "received_at": int(time.time())})

    def _play_frame(self, n: int) -> bytes:
        chunk = bytes(self._playout[:FRAME_BYTES])
        del self._playout[:FRAME_BYTES]
        if chunk and self._playing is None:
            self._playing = self._latest
            self.send({"type": "output_audio_buffer.started", "event_id": _event_id(), "response_id": self._playing})
        if self._playing is not None and not self._playout and self._playing not in self._producing:
            self.send({"type": "output_audio_buffer.stopped", "event_id": _event_id(), "response_id": self._playing})
            self._playing = None
        return chunk

    def end(self, reason: str) -> None:
        if self.call.ended.is_set():
            return
        self.call.end_reason = reason
        self.call.ended.set()
        self.runner.close()
        if self._ws is not None:
            self._loop.create_task(self._close_ws())

    async def _close_ws(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close(1000)


class OpenAISipPeer:
    """``async with OpenAISipPeer(persona) as peer:`` → ``peer.base_url`` for OPENAI_BASE_URL."""

    def __init__(self, persona: Persona, engine_config: EngineConfig | None = None, *,
                 api_key: str = "sk-peer", secret: str | None = None, caller_audio: bytes = b"",
                 dtmf: tuple[tuple[float, str], ...] = (), listen_s: float = 4.0,
                 host: str = "127.0.0.1", port: int = 0, failing_accepts: int = 0,
                 refuse_sideband: bool = False, refuse_reconnect: bool = False,
                 inject: tuple[str, ...] = ()) -> None:
        """Faults for the tests: ``failing_accepts`` accept requests fail with 500 first;
        ``refuse_sideband`` refuses the sideband's handshake, ``refuse_reconnect`` every one after a
        call's first; ``inject`` is raw text sent first on it. ``authorizations`` keeps the
        Authorization header of every request (REST and sideband), for the tests to check."""
        self.persona = persona
        self.engine_config = engine_config or EngineConfig()
        self.api_key = api_key
        self.secret = secret or new_webhook_secret()
        self.caller_audio, self.dtmf, self.listen_s = caller_audio, dtmf, listen_s
        self.host, self.port = host, port
        self.failing_accepts, self.refuse_sideband, self.inject = failing_accepts, refuse_sideband, inject
        self.refuse_reconnect = refuse_reconnect
        self.authorizations: list[str] = []
        self.calls: dict[str, PeerCall] = {}
        self._lines: dict[str, PhoneLine] = {}
        self._server: LoopbackServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def __aenter__(self) -> "OpenAISipPeer":
        # The direct lane's protocol only for its abort(): a sideband cut without a close frame.
        self._server = LoopbackServer([
            Route("/v1/realtime/calls/{call_id}/{verb}", self._rest, methods=["POST"]),
            WebSocketRoute("/v1/realtime", self._sideband),
        ], self.host, self.port, ws=DirectWebSocketProtocol)
        await self._server.start()
        self.port = self._server.port
        return self

    async def __aexit__(self, *exc: object) -> None:
        for line in self._lines.values():
            line.end("the peer stopped")
        await self._server.stop()

    # --- What the peer does on its own: ring the service ---

    async def ring(self, webhook_url: str, sip_headers: list[dict[str, str]] | None = None,
                   call_id: str | None = None, *, event_id: str | None = None,
                   timestamp: int | None = None, secret: str | None = None) -> PeerCall:
        """Sends ``realtime.call.incoming`` for a new (or the same, to redeliver) call."""
        call_id = call_id or "rtc_" + uuid.uuid4().hex
        headers = sip_headers if sip_headers is not None else [
            {"name": "From", "value": '"Caller" <sip:+15550100001@pstn.example.com>;tag=a1'},
            {"name": "To", "value": "<sip:+15550100002@sip.api.openai.com>"}]
        call = self.calls.setdefault(call_id, PeerCall(call_id, headers))
        body = incoming_call_event(call_id, headers, event_id)
        call.webhook_status = await deliver(webhook_url, body, secret or self.secret, event_id, timestamp)
        return call

    # --- OpenAI's REST API for calls ---

    async def drop_sideband(self, call_id: str, code: int | None = None) -> None:
        """Breaks the call's sideband connection while the call goes on: cut (None), or closed with
        ``code`` (1011: the server failed)."""
        await self._lines[call_id].drop_sideband(code)

    async def _rest(self, request: Request) -> Response:
        self.authorizations.append(request.headers.get("authorization", ""))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}, 401)
        call = self.calls.get(request.path_params["call_id"])
        verb = request.path_params["verb"]
        if call is None or verb not in ("accept", "reject", "refer", "hangup"):
            return JSONResponse({"error": {"message": "Not found", "type": "invalid_request_error"}}, 404)
        body = json.loads(await request.body() or b"{}")
        loop_time = asyncio.get_running_loop().time()
        call.timeline.append((loop_time, verb, ""))
        if verb == "accept" and self.failing_accepts > 0:
            self.failing_accepts -= 1
            return JSONResponse({"error": {"message": "The server had an error", "type": "server_error"}}, 500)
        if verb == "accept":
            call.accepts += 1
            if call.accepted is None and call.rejected is None:
                call.accepted = body
                self._lines[call.call_id] = PhoneLine(self, call)
        elif verb == "reject":
            call.rejected = int(body.get("status_code") or 603)
            call.ended.set()
        elif call.call_id not in self._lines:
            return JSONResponse({"error": {"message": "The call is not active"}}, 404)
        elif verb == "refer":
            call.referred_to.append(str(body.get("target_uri")))
            self._lines[call.call_id].end(f"referred to {body.get('target_uri')}")
        else:
            call.hung_up_at = loop_time
            self._lines[call.call_id].end("hung up by the service")
        return Response(status_code=200)

    async def _sideband(self, ws: WebSocket) -> None:
        self.authorizations.append(ws.headers.get("authorization", ""))
        line = self._lines.get(ws.query_params.get("call_id", ""))
        if (self.refuse_sideband or ws.headers.get("authorization") != f"Bearer {self.api_key}"
                or line is None or line.call.ended.is_set()
                or (self.refuse_reconnect and line.call.sidebands > 0)):
            if line is not None:
                line.call.sidebands_refused += 1
            await ws.close(1008)
            return
        line.call.sideband_headers = dict(ws.headers)
        await ws.accept()
        await line.attach(ws)


def _event_id() -> str:
    return "event_" + uuid.uuid4().hex[:20]
