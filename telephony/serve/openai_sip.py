"""OpenAI's SIP route: OpenAI answers the call and plays the audio; we accept it and steer it.

``POST /openai/sip`` takes OpenAI's signed webhooks (verified by the openai package). For a
``realtime.call.incoming`` it picks the profile from the SIP ``To`` header, then accepts the call
with the profile's session (or rejects it with 486 while draining or at the call limit), and runs
the call from the same Call core as a Twilio call, over the sideband websocket: greeting, tools
(hang-up only once the goodbye has stopped playing, transfer by SIP REFER), keypad digits,
transcripts. No audio passes through this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Callable

import openai
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from telephony.core import sip
from telephony.core.actions import Action, EndStream, HangUp, OpenRealtime, Record, ToRealtime, Transfer
from telephony.core.call import Call
from telephony.core.profile import Profile
from telephony.ops import logs
from telephony.ops.metrics import Metrics
from telephony.serve import realtime_client
from telephony.serve.limits import CallRegistry
from telephony.serve.realtime_client import RealtimeTransport
from telephony.serve.security import read_capped_body
from telephony.serve.telemetry import CallObserver
from telephony.serve.transcripts import TranscriptHub
from telephony.settings import Settings
from telephony.wire import openai_sip as wire
from telephony.wire import realtime as rt

log = logging.getLogger("telephony.openai_sip")

ROUTE = "openai_sip"  # the metrics label of these calls
MAX_WEBHOOK_BYTES = 256 * 1024  # an incoming-call event is a few KB even with many SIP headers
REMEMBERED_CALLS = 10_000  # call ids already handled, so a redelivered webhook is not accepted twice
TICK_S = 0.1  # the core's clock: keypad bursts and the after-goodbye deadline
CLOSE_TIMEOUT_S = 1.0
REST_TIMEOUT_S = 10.0

# The profile for a call, from the URI of its SIP To header; None: no profile answers there.
ProfileChooser = Callable[[str], Profile | None]


class OpenAISipRoute:
    """The webhook route and the calls it started. ``routes()`` is all the app adds."""

    def __init__(self, settings: Settings, choose_profile: ProfileChooser, calls: CallRegistry,
                 metrics: Metrics, transcripts: TranscriptHub) -> None:
        self.settings = settings
        self.choose_profile = choose_profile
        self.calls = calls
        self.metrics = metrics
        self.transcripts = transcripts
        self.base_url = settings.openai_base_url or wire.DEFAULT_BASE_URL
        self.client = openai.AsyncOpenAI(api_key=settings.openai_key() or "unset", base_url=self.base_url,
                                         webhook_secret=settings.openai_webhook_secret or None,
                                         max_retries=1, timeout=REST_TIMEOUT_S)
        self._handled: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        if not settings.openai_key():
            log.warning("OPENAI_WEBHOOK_SECRET is set but neither REALTIME_API_KEY nor OPENAI_API_KEY: "
                        "OpenAI's SIP calls cannot be accepted")

    def routes(self) -> list[Route]:
        return [Route(wire.OPENAI_SIP_PATH, self.webhook, methods=["POST"])]

    async def webhook(self, request: Request) -> Response:
        body = await read_capped_body(request, MAX_WEBHOOK_BYTES)  # before verification: never buffered whole
        if isinstance(body, Response):
            return body
        if (bad := wire.unverifiable_header(request.headers)) is not None:
            log.warning("OpenAI webhook refused: %s is not printable ASCII", bad)
            return _error(400, f"webhook signature refused: {bad} is not printable ASCII")
        try:
            event = self.client.webhooks.unwrap(body, request.headers)
        except openai.InvalidWebhookSignatureError as exc:
            log.warning("OpenAI webhook refused: %s", exc)
            return _error(400, f"webhook signature refused: {exc}")
        except ValueError as exc:  # a missing webhook-* header, or a body that is not JSON
            log.warning("OpenAI webhook refused: %s", exc)
            return _error(400, f"malformed webhook: {exc}")
        kind = getattr(event, "type", None)
        if kind != wire.INCOMING:
            log.info("OpenAI webhook %s ignored", kind)
            return Response(status_code=200)
        try:
            incoming = RealtimeCallIncomingWebhookEvent.model_validate_json(body)
        except ValidationError as exc:
            return _error(400, f"malformed {wire.INCOMING}: {exc.error_count()} field error(s)")
        return await self._incoming(incoming)

    async def _incoming(self, event: RealtimeCallIncomingWebhookEvent) -> Response:
        call_id = event.data.call_id
        if call_id in self._handled:  # OpenAI redelivers until it sees a 2xx
            log.info("call %s: webhook %s repeated; already handled", call_id, event.id)
            return Response(status_code=200)
        self._remember(call_id)
        headers = [h.model_dump() for h in event.data.sip_headers]
        to = wire.address(wire.header(headers, "To"))
        busy = self.calls.accepting()
        profile = None if busy else self.choose_profile(to)
        if busy or profile is None:
            log.warning("call %s: rejected (%s)", call_id, busy or f"no profile answers {to!r}")
            status = wire.BUSY_HERE if busy else wire.NOT_FOUND
            failed = await self._rest(call_id, "reject", self.client.realtime.calls.reject(call_id, status_code=status))
            return failed or Response(status_code=200)
        parameters = {"call_sid": call_id, "from": wire.address(wire.header(headers, "From")), "to": to,
                      **sip.header_parameters(sip.select_headers(
                          profile.sip_headers, ((h["name"], h["value"]) for h in headers)))}
        call = Call(profile, carries_media=False)
        starting = call.begin(call_id, parameters, time.monotonic())
        session = wire.accept_session(call.session_config(), self.settings.openai_sip_model)
        failed = await self._rest(call_id, "accept", self.client.realtime.calls.accept(call_id, **session))
        if failed is not None:
            return failed
        log.info("call %s: accepted for %s", call_id, to)
        task = asyncio.create_task(SidebandCall(self, call, starting).run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Response(status_code=200)

    async def _rest(self, call_id: str, verb: str, request) -> Response | None:
        """One REST call about ``call_id``: None when it went through, else the webhook's answer.
        On a failure the call is forgotten, so OpenAI's redelivery of the webhook tries again."""
        try:
            await request
        except openai.NotFoundError:  # the caller hung up while it rang: nothing to retry
            log.warning("call %s: %s: the call is gone (404)", call_id, verb)
            return Response(status_code=200)
        except openai.APIStatusError as exc:
            log.error("call %s: OpenAI refused %s: HTTP %s", call_id, verb, exc.status_code)
            self._handled.pop(call_id, None)
            return _error(502, f"OpenAI refused {verb}: HTTP {exc.status_code}")
        except openai.APIError as exc:  # unreachable, timed out
            log.error("call %s: %s failed: %s", call_id, verb, type(exc).__name__)
            self._handled.pop(call_id, None)
            return _error(502, f"{verb} failed: {type(exc).__name__}")
        return None

    def _remember(self, call_id: str) -> None:
        self._handled[call_id] = None
        while len(self._handled) > REMEMBERED_CALLS:
            self._handled.popitem(last=False)

    async def close(self) -> None:
        """Stops following the calls (they go on at OpenAI without tools); the REST client closes."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()


class SidebandCall:
    """The shell around one call without media: the sideband socket, the clock, REST control."""

    def __init__(self, route: OpenAISipRoute, call: Call, starting: list[Action]) -> None:
        self.route = route
        self.call = call
        self.call_id = call.call_sid or ""
        self._starting = starting
        self._loop = asyncio.get_running_loop()
        self._sideband: RealtimeTransport | None = None
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._observer: CallObserver | None = None  # made in run(): the call's log context is its task's

    def now(self) -> float:
        return self._loop.time()

    async def run(self) -> None:
        route = self.route
        self._observer = CallObserver(route.metrics, route.settings.call_records_dir, logs.bind_call(), route=ROUTE)
        calls, transcripts = route.calls, route.transcripts
        calls.add(self)
        transcripts.begin(self.call_id)
        try:
            self.dispatch(self._starting)
            self._spawn(self._ticker())
            await self._done.wait()
        finally:
            if self._sideband is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._sideband.close(), CLOSE_TIMEOUT_S)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            calls.discard(self)
            transcripts.end(self.call_id)
            self._observer.close()

    def end(self, reason: str) -> None:
        """The service is shutting down: hang the call up rather than leave it without tools."""
        log.info("call %s: ending: %s", self.call_id, reason)
        self._spawn(self._control(HangUp(reason)))

    # --- Actions into I/O ---

    def dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToRealtime):
                if self._sideband is not None:
                    self._sideband.send(wire.serialize(action.command))
            elif isinstance(action, Record):
                self._observer.on_record(self.call, action)
                if action.kind == "transcript":
                    self.route.transcripts.publish(self.call_id, action.data)
            elif isinstance(action, OpenRealtime):
                self._spawn(self._pump())
            elif isinstance(action, (HangUp, Transfer)):
                self._spawn(self._control(action))
            elif isinstance(action, EndStream):
                self._done.set()
            # ToTwilio: a call without media sends nothing to play

    def _spawn(self, coro) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def _pump(self) -> None:
        url = wire.sideband_url(self.route.base_url, self.call_id)
        headers = {"Authorization": f"Bearer {self.route.settings.openai_key()}"}
        try:
            self._sideband = await realtime_client.connect_to(url, headers, self.route.settings)
        except Exception as exc:  # refused, timed out, rejected handshake
            log.error("call %s: cannot open the sideband: %s; hanging up", self.call_id, exc)
            with contextlib.suppress(openai.APIError):  # a call we cannot steer is not left running
                await self.route.client.realtime.calls.hangup(self.call_id)
            self.dispatch(self.call.on_realtime_closed(f"sideband connect failed: {exc}"))
            return
        self.dispatch(self.call.on_realtime_open(self.now()))
        reason = "closed by OpenAI"
        try:
            while True:
                self._on_message(await self._sideband.recv())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
        self.dispatch(self.call.on_realtime_closed(reason))

    def _on_message(self, text: str) -> None:
        self._observer.received("realtime")
        try:
            event = wire.decode(text)
        except rt.RealtimeProtocolError as exc:
            log.warning("call %s: bad sideband message: %s", self.call_id, exc)
            return
        self.dispatch(self.call.on_realtime(event, self.now()))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.dispatch(self.call.on_tick(self.now()))

    async def _control(self, action: HangUp | Transfer) -> None:
        calls = self.route.client.realtime.calls
        try:
            if isinstance(action, HangUp):
                log.info("call %s: hanging up: %s", self.call_id, action.loggable)
                await calls.hangup(self.call_id)
                self.dispatch(self.call.on_hung_up(action.reason))
            else:
                target = sip.refer_uri(action.number)
                log.info("call %s: transferring to %s (SIP REFER)", self.call_id, target)
                await calls.refer(self.call_id, target_uri=target)
                self.dispatch([Record("transferred", {"target": target})])
        except openai.APIError as exc:
            status = getattr(exc, "status_code", None)
            log.error("call %s: OpenAI refused %s (%s): %s", self.call_id, type(action).__name__,
                      status or type(exc).__name__, getattr(exc, "message", ""))
            if isinstance(action, HangUp):
                self.dispatch(self.call.on_hung_up(f"{action.reason} (hang-up refused)"))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
