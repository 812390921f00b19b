"""OpenAI's GPT-Live SIP side, offline and scripted: webhook, REST and the ``/attach`` sideband.

``LiveSipPeer`` sends the signed ``live.transport.incoming`` (or ``live.call.incoming``) webhook,
serves ``/v1/live/sessions/{id}/accept|reject|refer|hangup`` and the sideband websocket
``/v1/live/sessions/{id}/attach``, and plays a short scripted call on the session's clock (ms since
the accept): once greeted (``session.instructions.append``) the agent "speaks" the greeting, the
caller answers, presses a key, and the delegated backend calls a tool before the agent's goodbye is
reflected. The agent's audio is reflected at playout pace as ``session.output_audio.delta`` with
``start_ms``/``end_ms`` (silence: nobody listens), the words as transcript deltas.

Every client message is checked against the openai package's Live models (``ConnectClientEvent``,
unknown fields refused, as the SDK's models allow them); every server event it sends validates
against ``ConnectServerEvent``. Facts: ../shared/PROTOCOLS.md, "GPT-Live over SIP".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from openai.types.live import ConnectClientEvent, ConnectServerEvent
from openai.types.live.session_accept_params import Session as AcceptSession
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from telephony.offline.openai_side import LoopbackServer, deliver, new_webhook_secret

CLIENT_EVENTS = TypeAdapter(ConnectClientEvent)
SERVER_EVENTS = TypeAdapter(ConnectServerEvent)
ACCEPT_FIELDS = frozenset(AcceptSession.__annotations__)
CHUNK_MS = 100  # reflected agent audio per delta
SILENT_CHUNK = base64.b64encode(b"\0" * (CHUNK_MS * 48)).decode()  # PCM16 24 kHz


def unknown_fields(model: Any) -> list[str]:
    """Fields the SDK's model accepted only because it allows extras: refused here."""
    found = [f"{type(model).__name__}.{k}" for k in (model.model_extra or {})] if isinstance(model, BaseModel) else []
    for value in (vars(model).values() if isinstance(model, BaseModel) else ()):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                found += unknown_fields(item)
    return found


def incoming_event(session_id: str, sip_headers: list[dict[str, str]], kind: str = "live.transport.incoming",
                   event_id: str | None = None) -> bytes:
    data: dict[str, Any] = {"session_id": session_id, "sip_headers": sip_headers}
    if kind == "live.transport.incoming":
        data = {"type": "sip", **data, "sip_media_security": "srtp"}
    return json.dumps({"object": "event", "id": event_id or "evt_" + uuid.uuid4().hex, "type": kind,
                       "created_at": int(time.time()), "data": data}).encode()


@dataclass
class LiveScript:
    greeting_ms: int = 600
    caller_says: str = "I am done, thank you."
    caller_ms: int = 500
    dtmf: str = "5"  # pressed after speaking ("" for none)
    tool: tuple[str, str] | None = ("end_call", '{"reason": "the caller is done"}')
    goodbye_ms: int = 900  # reflected after the tool call arrives
    gap_ms: int = 200  # a dropped-frames gap in the middle of the goodbye's reflections
    listen_s: float = 6.0  # then the caller hangs up (session.closed remote_hangup)
    # The delegated tool call waits until this many sidebands have attached (2: one deploy between).
    tool_after_sidebands: int = 1


@dataclass
class LiveSession:
    session_id: str
    sip_headers: list[dict[str, str]]
    webhook_statuses: list[int] = field(default_factory=list)
    accepted: dict[str, Any] | None = None
    accepts: int = 0
    rejected: int | None = None
    referred_to: list[str] = field(default_factory=list)
    hung_up_ms: float | None = None  # session clock at the hang-up request
    referred_ms: float | None = None  # session clock at the (first) refer request
    goodbye_end_ms: int | None = None  # the last end_ms reflected
    speech_end_ms: int | None = None  # where the latest speech ends, reflected yet or not
    received: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # client messages the SDK's models refuse
    sent: list[dict[str, Any]] = field(default_factory=list)
    sidebands: int = 0
    received_on: list[int] = field(default_factory=list)  # which sideband (1, 2, …) each message came on
    attached_at: list[float] = field(default_factory=list)  # session ms of each attach
    detached_at: list[float] = field(default_factory=list)  # session ms of each sideband's close
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    t0: float = 0.0  # loop time of the accept: session time 0
    # The call itself, which outlives any sideband: closing one detaches only that observer.
    greeted: asyncio.Event = field(default_factory=asyncio.Event)
    attached: asyncio.Condition = field(default_factory=asyncio.Condition)
    play: asyncio.Task | None = None
    # With the local engine (local_live_sip): the SIP leg, frame for frame from the accept on.
    caller: bytearray = field(default_factory=bytearray)  # what the caller said, μ-law
    agent: bytearray = field(default_factory=bytearray)  # what the caller heard
    unsent: list[str] = field(default_factory=list)  # server events the package's models refused

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]


class LiveSipSide:
    """OpenAI's Live SIP side without the call itself: the webhook, the REST endpoints, the
    ``/attach`` sideband (``session.started`` first on each attach; several in turn; closing one
    detaches only it), every client message checked, ``session.closed`` at the end. What the
    session says is a subclass's: ``_accepted``, ``_attached``, ``_client`` and ``_ending``.
    ``async with Side() as side:`` → ``side.base_url`` for OPENAI_BASE_URL."""

    def __init__(self, *, api_key: str = "sk-peer", secret: str | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.api_key, self.secret, self.host, self.port = api_key, secret or new_webhook_secret(), host, port
        self.sessions: dict[str, LiveSession] = {}
        self.authorizations: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (verb, id) of every REST request
        self._server: LoopbackServer | None = None
        self._ws: dict[str, WebSocket] = {}

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def __aenter__(self):
        self._server = LoopbackServer([Route("/v1/live/sessions/{sid}/{verb}", self._rest, methods=["POST"]),
                                       WebSocketRoute("/v1/live/sessions/{sid}/attach", self._attach)],
                                      self.host, self.port)
        await self._server.start()
        self.port = self._server.port
        return self

    async def __aexit__(self, *exc: object) -> None:
        for s in self.sessions.values():
            s.ended.set()
            if s.play is not None:
                s.play.cancel()
            self._ending(s)
        await self._server.stop()

    async def ring(self, webhook_url: str, sip_headers: list[dict[str, str]], session_id: str | None = None, *,
                   kind: str = "live.transport.incoming", event_id: str | None = None) -> LiveSession:
        session_id = session_id or "live_" + uuid.uuid4().hex
        session = self.sessions.setdefault(session_id, LiveSession(session_id, sip_headers))
        body = incoming_event(session_id, sip_headers, kind, event_id)
        session.webhook_statuses.append(await deliver(webhook_url, body, self.secret, event_id))
        return session

    # --- What the session does: the subclass's ---

    def _accepted(self, s: LiveSession) -> None:
        """The first accept went through (session time 0)."""

    def _resource(self, s: LiveSession) -> dict[str, Any]:
        """The session as ``session.started`` describes it on attach."""
        return {"id": s.session_id, "object": "live.session", "expires_at": int(time.time()) + 3600,
                "model": (s.accepted or {}).get("model", ""), "status": "active"}

    def _attached(self, s: LiveSession) -> None:
        """A sideband attached (after ``session.started``)."""

    def _client(self, s: LiveSession, text: str) -> None:
        """A client message on the sideband, already checked against the package's models."""

    def _ending(self, s: LiveSession) -> None:
        """The session is over: stop what plays it."""

    # --- REST ---

    def _now_ms(self, s: LiveSession) -> float:
        return (asyncio.get_running_loop().time() - s.t0) * 1000

    async def _rest(self, request: Request) -> Response:
        self.authorizations.append(request.headers.get("authorization", ""))
        sid, verb = request.path_params["sid"], request.path_params["verb"]
        self.requests.append((verb, sid))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _err(401, "invalid_api_key", "Incorrect API key")
        s = self.sessions.get(sid)
        if s is None or verb not in ("accept", "reject", "refer", "hangup"):
            return _err(404, "not_found", "No such session")
        body = json.loads(await request.body() or b"{}")
        if verb == "accept":
            return self._accept(s, body)
        if verb == "reject":
            status = body.get("status_code")
            if set(body) - {"status_code"} or not isinstance(status, int) or not 300 <= status <= 699:
                return _err(400, "invalid_value", "status_code must be 300-699")
            s.rejected = status
            s.ended.set()
            return Response(status_code=200)
        if s.accepted is None or s.ended.is_set():
            return _err(404, "not_found", "The session is not active")
        if verb == "refer":
            if set(body) - {"target_uri"} or not str(body.get("target_uri") or "").strip():
                return _err(400, "invalid_value", "target_uri is required")
            s.referred_to.append(body["target_uri"])
            s.referred_ms = s.referred_ms if s.referred_ms is not None else self._now_ms(s)
        else:
            s.hung_up_ms = self._now_ms(s)
        await self._close(s, "close_requested")
        return Response(status_code=200)

    def _accept(self, s: LiveSession, body: dict[str, Any]) -> Response:
        session = body.get("session")
        if set(body) != {"session"} or not isinstance(session, dict):
            return _err(400, "missing_required_parameter", "session is required")
        extra = set(session) - ACCEPT_FIELDS
        if extra:
            return _err(400, "unknown_parameter", f"Unknown parameter: session.{sorted(extra)[0]}")
        if session.get("type") != "live" or not session.get("model"):
            return _err(400, "invalid_value", "session.type must be live and session.model is required")
        if "format" in (session.get("audio") or {}):
            return _err(400, "invalid_value", "audio.format is accepted on primary WebSockets only")
        s.accepts += 1
        if s.accepted is None and s.rejected is None:
            s.accepted, s.t0 = session, asyncio.get_running_loop().time()
            self._accepted(s)
        return Response(status_code=200)

    # --- The sideband ---

    async def _attach(self, ws: WebSocket) -> None:
        self.authorizations.append(ws.headers.get("authorization", ""))
        s = self.sessions.get(ws.path_params["sid"])
        if ws.headers.get("authorization") != f"Bearer {self.api_key}" or s is None or s.accepted is None \
                or s.ended.is_set():
            await ws.close(1008)
            return
        await ws.accept()
        s.sidebands += 1
        number = s.sidebands
        s.attached_at.append(self._now_ms(s))
        self._ws[s.session_id] = ws
        await self._send(s, {"type": "session.started", "event_id": _eid(), "session": self._resource(s)})
        async with s.attached:
            s.attached.notify_all()
        self._attached(s)
        try:
            while True:
                text = await ws.receive_text()
                before = len(s.received)
                self._check(s, text)
                if len(s.received) > before:
                    s.received_on.append(number)
                self._client(s, text)
        except WebSocketDisconnect:
            pass
        finally:
            s.detached_at.append(self._now_ms(s))
            if self._ws.get(s.session_id) is ws:
                del self._ws[s.session_id]

    def _check(self, s: LiveSession, text: str) -> None:
        try:
            msg = json.loads(text)
            s.received.append(msg)
            s.invalid += unknown_fields(CLIENT_EVENTS.validate_python(msg))
        except (ValueError, ValidationError) as exc:
            s.invalid.append(f"{text[:80]}: {exc}")

    async def _send(self, s: LiveSession, event: dict[str, Any]) -> None:
        SERVER_EVENTS.validate_python(event)  # the peer speaks only shapes the SDK knows
        s.sent.append(event)
        ws = self._ws.get(s.session_id)
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.send_text(json.dumps(event))

    async def _close(self, s: LiveSession, reason: str) -> None:
        if s.ended.is_set():
            return
        s.end_reason = reason
        await self._send(s, {"type": "session.closed", "event_id": _eid(), "reason": reason,
                             "session": {"id": s.session_id, "object": "live.session", "expires_at": 0,
                                         "model": (s.accepted or {}).get("model", ""), "status": "active"},
                             "usage": {"seconds": round(self._now_ms(s) / 1000, 3)}})
        s.ended.set()
        if s.play is not None and s.play is not asyncio.current_task():
            s.play.cancel()  # the call is over: nothing more is said
        self._ending(s)
        ws = self._ws.get(s.session_id)
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000)


class LiveSipPeer(LiveSipSide):
    """The scripted call (``LiveScript``) on the Live SIP side: it starts once greeted."""

    def __init__(self, script: LiveScript | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.script = script or LiveScript()

    def _attached(self, s: LiveSession) -> None:
        if s.play is None:  # the call plays on whoever is attached, and while no one is
            s.play = asyncio.create_task(self._play(s))

    def _client(self, s: LiveSession, text: str) -> None:
        if s.received and s.received[-1].get("type") == "session.instructions.append":
            s.greeted.set()

    async def _speak(self, s: LiveSession, words: str, ms: int, gap_at: int | None = None) -> None:
        """Reflects ``ms`` of agent audio at playout pace, its words as one transcript delta."""
        start = int(self._now_ms(s))
        s.speech_end_ms = start + ms
        await self._send(s, {"type": "session.output_transcript.delta", "event_id": _eid(), "delta": words,
                             "start_ms": start, "end_ms": start + ms})
        for at in range(0, ms, CHUNK_MS):
            if gap_at is not None and gap_at <= at < gap_at + self.script.gap_ms:
                await asyncio.sleep(CHUNK_MS / 1000)  # dropped frames: played, not reflected
                continue
            await self._send(s, {"type": "session.output_audio.delta", "event_id": _eid(), "delta": SILENT_CHUNK,
                                 "start_ms": start + at, "end_ms": start + at + CHUNK_MS})
            s.goodbye_end_ms = start + at + CHUNK_MS
            await asyncio.sleep(CHUNK_MS / 1000)

    async def _play(self, s: LiveSession) -> None:
        sc = self.script
        await s.greeted.wait()
        await self._speak(s, "Hello, how can I help?", sc.greeting_ms)
        start = int(self._now_ms(s))
        await asyncio.sleep(sc.caller_ms / 1000)
        await self._send(s, {"type": "session.input_transcript.delta", "event_id": _eid(),
                             "delta": sc.caller_says, "start_ms": start, "end_ms": start + sc.caller_ms})
        if sc.dtmf:
            await self._send(s, {"type": "transport.dtmf.received", "event_id": _eid(), "event": sc.dtmf})
        async with s.attached:  # e.g. the instance steering it stopped: the call waits for the next
            await s.attached.wait_for(lambda: s.sidebands >= sc.tool_after_sidebands and s.session_id in self._ws)
        if sc.tool is not None:
            name, arguments = sc.tool
            await self._send(s, {"type": "response.event", "event_id": _eid(), "delegation_id": "del_1", "event": {
                "type": "response.output_item.done", "response_id": "resp_1", "output_index": 0,
                "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": name,
                         "arguments": arguments, "status": "completed"}}})
        await asyncio.sleep(0.2)  # the backend's answer reaches the voice model
        await self._speak(s, "Goodbye, have a nice day.", sc.goodbye_ms, gap_at=sc.goodbye_ms // 3)
        await asyncio.sleep(sc.listen_s)
        await self._close(s, "remote_hangup")


def _eid() -> str:
    return "event_" + uuid.uuid4().hex[:20]


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": code,
                                   "param": None}}, status_code=status)
