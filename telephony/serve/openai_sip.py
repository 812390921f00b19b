"""OpenAI's SIP route: OpenAI answers the call and plays the audio; we accept it and steer it.

``POST /openai/sip`` takes OpenAI's signed webhooks (verified by the openai package) and answers
either engine OpenAI's SIP trunk offers: ``realtime.call.incoming`` as a Realtime session
(``/v1/realtime/calls/{rtc_…}``, GA sideband), ``live.transport.incoming`` (or the deprecated
``live.call.incoming``) as a GPT-Live session (``/v1/live/sessions/{live_…}``, ``/attach``
sideband). It picks the profile from the SIP ``To`` header, then accepts the call with the
profile's session (or rejects it with 486 while draining or at the call limit), and runs the call
from the same Call core as a Twilio call, over the sideband websocket: greeting, tools (hang-up
only once the goodbye has been heard, transfer by SIP REFER, and the business tools through the
same runner as a Twilio stream's), keypad digits, transcripts. No audio passes through this process.

Several instances may receive the same webhook (OpenAI redelivers until it sees a 2xx): the call
id is claimed in the shared state, so one of them accepts it. One INVITE fires both engines'
events when the endpoint subscribes to both: its SIP Call-ID is claimed too, so the first event
chooses the engine and the other is acknowledged and nothing else. A call's place under
MAX_CONCURRENT_CALLS is held before the accept is awaited, and MAX_TOTAL_CALLS and GET /calls
count these calls as they do Twilio's. A sideband that drops is reopened once; a call that can no
longer be steered is hung up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Callable

import openai
from openai.types.webhooks import (
    LiveCallIncomingWebhookEvent,
    LiveTransportIncomingWebhookEvent,
    RealtimeCallIncomingWebhookEvent,
)
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from telephony.core import sip
from telephony.core.actions import Action, EndStream, HangUp, OpenRealtime, Record, RunTool, ToRealtime, Transfer
from telephony.core.call import Call
from telephony.core.profile import Profile
from telephony.history.recorder import CallHistory
from telephony.ops import logs
from telephony.ops.metrics import Metrics
from telephony.serve import realtime_client, sip_parking
from telephony.serve.limits import CallRegistry, Place
from telephony.serve.realtime_client import RealtimeTransport
from telephony.serve.security import read_capped_body
from telephony.serve.shared_state import LocalState, RedisState, call_entry
from telephony.serve.telemetry import CallObserver
from telephony.serve.tools import CallTools, ToolRunner
from telephony.serve.transcripts import TranscriptHub
from telephony.settings import Settings
from telephony.wire import live_sip
from telephony.wire import openai_sip as wire
from telephony.wire import realtime as rt

log = logging.getLogger("telephony.openai_sip")

ROUTE = "openai_sip"  # the metrics label of these calls
MAX_WEBHOOK_BYTES = 256 * 1024  # an incoming-call event is a few KB even with many SIP headers
# A call id is claimed (across instances, with REDIS_URL) this long: OpenAI redelivers a webhook
# it saw no 2xx for, and an accept later than this finds the call gone (404) anyway.
CLAIM_TTL_S = 3600.0
TICK_S = 0.1  # the core's clock: keypad bursts and the after-goodbye deadline
CLOSE_TIMEOUT_S = 1.0
REST_TIMEOUT_S = 10.0
NORMAL_CLOSURE = 1000  # OpenAI closes the sideband so when the call ends; anything else is a drop
HELD_LIMIT = 200  # sideband messages kept while it reconnects (tool outputs, keypad digits)
PARK_TOOL_WAIT_S = 1.0  # at shutdown, a running tool gets this long to answer before its call is parked

# The profile for a call, from the URI of its SIP To header; None: no profile answers there.
ProfileChooser = Callable[[str], Profile | None]


class RealtimeEngine:
    """A call accepted as a Realtime session: ``/v1/realtime/calls/{rtc_…}``, GA sideband."""

    name = "ga"
    dialect = wire

    def __init__(self, client: openai.AsyncOpenAI, settings: Settings, base_url: str) -> None:
        self.client, self.settings, self.base_url = client, settings, base_url

    def new_call(self, profile: Profile) -> Call:
        return Call(profile, carries_media=False)

    def accept(self, call_id: str, call: Call):
        session = wire.accept_session(call.session_config(), self.settings.openai_sip_model)
        return self.client.realtime.calls.accept(call_id, **session)

    def calls(self):
        """The openai client's resource for this engine's calls (same verbs on both engines)."""
        return self.client.realtime.calls

    def reject(self, call_id: str, status: int):
        return self.calls().reject(call_id, status_code=status)

    def hangup(self, call_id: str):
        return self.calls().hangup(call_id)

    def refer(self, call_id: str, target: str):
        return self.calls().refer(call_id, target_uri=target)

    def sideband_url(self, call_id: str) -> str:
        return wire.sideband_url(self.base_url, call_id)


class LiveEngine(RealtimeEngine):
    """A call accepted as a GPT-Live session: ``/v1/live/sessions/{live_…}``, ``/attach`` sideband."""

    name = "live"
    dialect = live_sip

    def model(self) -> str:
        """REALTIME_MODEL when it names a Live model (REALTIME_DIALECT=live), else OpenAI's default."""
        s = self.settings
        return s.realtime_model if s.realtime_dialect == "live" and s.realtime_model else live_sip.DEFAULT_MODEL

    def new_call(self, profile: Profile) -> Call:
        return Call(profile, carries_media=False, capabilities=live_sip.capabilities, model=self.model(),
                    delegation_model=self.settings.live_delegation_model)

    def accept(self, call_id: str, call: Call):
        return self.calls().accept(call_id, session=live_sip.accept_session(call.session_config(), self.model()))

    def calls(self):
        return self.client.live.sessions

    def sideband_url(self, call_id: str) -> str:
        return live_sip.attach_url(self.base_url, call_id)


class OpenAISipRoute:
    """The webhook route and the calls it started. ``routes()`` is all the app adds."""

    tracing = None  # ops.tracing.Tracing when the app exports traces: each call's spans

    def __init__(self, settings: Settings, choose_profile: ProfileChooser, calls: CallRegistry,
                 metrics: Metrics, transcripts: TranscriptHub, state: LocalState | RedisState | None = None,
                 tools: ToolRunner | None = None,
                 history: Callable[[], CallHistory | None] = lambda: None,
                 profile_named: Callable[[str], Profile] | None = None) -> None:
        """``state``: where call ids are claimed and calls listed (the app's: shared with REDIS_URL).
        ``history``: a new call's history recorder (None: the history is off).
        ``profile_named``: the profile of that name, for a call adopted from another instance.
        Raises SettingsError naming OPENAI_API_KEY when there is no key of OpenAI's to send."""
        self.api_key = settings.require_openai_key()
        self.settings = settings
        self.choose_profile = choose_profile
        self.calls = calls
        self.metrics = metrics
        self.transcripts = transcripts
        self.state = state or LocalState()
        self.tools = tools or ToolRunner(settings.tools_secret)
        self.history = history
        self.base_url = settings.openai_base_url or wire.DEFAULT_BASE_URL
        self.client = openai.AsyncOpenAI(api_key=self.api_key, base_url=self.base_url,
                                         webhook_secret=settings.openai_webhook_secret or None,
                                         max_retries=1, timeout=REST_TIMEOUT_S)
        self.engines = {"ga": RealtimeEngine(self.client, settings, self.base_url),
                        "live": LiveEngine(self.client, settings, self.base_url)}
        self._tasks: set[asyncio.Task] = set()
        self.profile_named = profile_named
        # Where calls wait for another instance when this one stops (Redis, or STATE_DIR); none:
        # they are hung up at shutdown, as a call nobody steers has no tools and no end_call.
        self.lot = sip_parking.make_lot(self.state, settings.state_dir, settings.handoff_ttl_seconds)
        self._watcher: asyncio.Task | None = None
        if self.lot is not None:
            calls.park = self.park

    def start_adopting(self) -> None:
        """Watches for calls other instances (or this one before a restart) parked; the app's
        lifespan starts it."""
        if self.lot is not None and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(sip_parking.watch(
                self.lot, lambda: self.calls.accepting() is None, self._adopt))

    async def park(self, call) -> bool:
        """Shutdown: leaves a steered call for another instance instead of hanging it up."""
        if self.lot is None or not isinstance(call, SidebandCall):
            return False
        return await call.park(self.lot)

    async def _adopt(self, record: dict) -> bool:
        """A call another instance parked: steered from here on, over a new sideband."""
        engine = self.engines.get(record.get("engine", ""))
        call_id = str(record.get("call_id") or "")
        if engine is None or not call_id:
            log.error("parked call %r of unknown engine %r dropped", call_id, record.get("engine"))
            return True
        place = self.calls.reserve()
        if place is None:
            return False
        parameters = {str(k): str(v) for k, v in (record.get("parameters") or {}).items()}
        name = str(record.get("profile") or "")
        profile = (self.profile_named(name) if self.profile_named and name else None) \
            or self.choose_profile(parameters.get("to", ""))
        if profile is None:
            place.release()
            log.error("call %s: no profile here for the parked call; left to OpenAI", call_id)
            return True
        call = engine.new_call(profile)
        starting = call.begin(call_id, parameters, time.monotonic())
        call.adopt(record, asyncio.get_running_loop().time())
        log.info("call %s: adopted (%s) from %s; attaching its sideband", call_id, engine.name,
                 record.get("parked_by", "another instance"))
        self.metrics.handoffs.labels("resumed").inc()
        sideband = SidebandCall(self, call, starting, engine, earlier=record.get("transcript") or [])
        place.fill(sideband)
        task = asyncio.create_task(sideband.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

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
        model = _INCOMING_MODELS.get(kind)
        if model is None:
            log.info("OpenAI webhook %s ignored", kind)
            return Response(status_code=200)
        try:
            incoming = model.model_validate_json(body)
        except ValidationError as exc:
            return _error(400, f"malformed {kind}: {exc.error_count()} field error(s)")
        if isinstance(incoming, RealtimeCallIncomingWebhookEvent):
            return await self._incoming(self.engines["ga"], incoming.data.call_id, incoming)
        return await self._incoming(self.engines["live"], incoming.data.session_id, incoming)

    async def _incoming(self, engine: RealtimeEngine, call_id: str, event) -> Response:
        if not await self.state.claim(_claim_key(call_id), CLAIM_TTL_S):  # OpenAI redelivers until it sees a 2xx
            log.info("call %s: webhook %s repeated; already handled here or on another instance", call_id, event.id)
            return Response(status_code=200)
        headers = [h.model_dump() for h in event.data.sip_headers]
        # One INVITE fires both realtime.call.incoming and live.transport.incoming when both are
        # subscribed: the first to arrive chooses the engine, by the INVITE's SIP Call-ID.
        invite = wire.header(headers, "Call-ID")
        if invite and not await self.state.claim(_invite_key(invite), CLAIM_TTL_S):
            log.info("call %s: SIP call %s already answered through the other API; %s acknowledged only",
                     call_id, invite[:80], event.type)
            return Response(status_code=200)
        claims = (_claim_key(call_id), *((_invite_key(invite),) if invite else ()))
        place = self.calls.reserve()  # before any await: a burst of webhooks cannot overshoot the limit
        try:
            return await self._answer(engine, call_id, headers, claims, place)
        finally:
            if place is not None:
                place.release()  # a no-op once the call took it

    async def _answer(self, engine: RealtimeEngine, call_id: str, headers: list[dict], claims: tuple[str, ...],
                      place: Place | None) -> Response:
        """Accepts the call into the place held for it, or rejects it (no place: busy)."""
        to = wire.address(wire.header(headers, "To"))
        busy = None if place is not None else self.calls.accepting() or "busy"
        profile = None if busy else self.choose_profile(to)
        limit = self.settings.max_total_calls
        if profile is not None and limit and not await self.state.admit(call_id, limit):
            busy = f"at the limit of {limit} calls across instances"
        if busy or profile is None:
            log.warning("call %s: rejected (%s)", call_id, busy or f"no profile answers {to!r}")
            status = wire.BUSY_HERE if busy else wire.NOT_FOUND
            failed = await self._rest(call_id, "reject", engine.reject(call_id, status), claims)
            return failed or Response(status_code=200)
        parameters = {"call_sid": call_id, "from": wire.address(wire.header(headers, "From")), "to": to,
                      "direction": "inbound",
                      **sip.header_parameters(sip.select_headers(
                          profile.sip_headers, ((h["name"], h["value"]) for h in headers)))}
        call = engine.new_call(profile)
        starting = call.begin(call_id, parameters, time.monotonic())
        failed = await self._rest(call_id, "accept", engine.accept(call_id, call), claims)
        if failed is not None:
            return failed
        log.info("call %s: accepted (%s) for %s", call_id, engine.name, to)
        sideband = SidebandCall(self, call, starting, engine)
        place.fill(sideband)  # held since the webhook arrived
        task = asyncio.create_task(sideband.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Response(status_code=200)

    async def _rest(self, call_id: str, verb: str, request, claims: tuple[str, ...]) -> Response | None:
        """One REST call about ``call_id``: None when it went through, else the webhook's answer.
        On a failure the call id's claim is given up, so that OpenAI's redelivery of the webhook
        tries again (here or on another instance)."""
        try:
            await request
        except openai.NotFoundError:  # the caller hung up while it rang: nothing to retry
            log.warning("call %s: %s: the call is gone (404)", call_id, verb)
            return Response(status_code=200)
        except openai.APIStatusError as exc:
            log.error("call %s: OpenAI refused %s: HTTP %s", call_id, verb, exc.status_code)
            await self._release(claims)
            return _error(502, f"OpenAI refused {verb}: HTTP {exc.status_code}")
        except openai.APIError as exc:  # unreachable, timed out
            log.error("call %s: %s failed: %s", call_id, verb, type(exc).__name__)
            await self._release(claims)
            return _error(502, f"{verb} failed: {type(exc).__name__}")
        return None

    async def _release(self, claims: tuple[str, ...]) -> None:
        for key in claims:
            await self.state.release(key)

    async def close(self) -> None:
        """Stops following the calls (they go on at OpenAI without tools); the REST client closes."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()


class SidebandCall:
    """The shell around one call without media: the sideband socket, the clock, REST control,
    the business tools."""

    def __init__(self, route: OpenAISipRoute, call: Call, starting: list[Action],
                 engine: RealtimeEngine | None = None, earlier: list[dict] | None = None) -> None:
        """``earlier``: an adopted call's transcript on its first instance (seq goes on from it)."""
        self.route = route
        self.engine = engine or route.engines["ga"]
        self.call = call
        self.call_id = call.call_sid or ""
        self.tools = CallTools(route.tools, call)
        self._starting = starting
        self._loop = asyncio.get_running_loop()
        self._sideband: RealtimeTransport | None = None  # None while (re)connecting
        self._held: list[str] = []  # what the core sent while the sideband was away
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._observer: CallObserver | None = None  # made in run(): the call's log context is its task's
        self._earlier = earlier or []
        self._parked = False  # left for another instance at shutdown: the call goes on there

    def now(self) -> float:
        return self._loop.time()

    async def run(self) -> None:
        """Serves the call until it ends; the route has already registered it in its CallRegistry."""
        route = self.route
        trace = route.tracing.call(ROUTE, self.engine.name, audio=False) if route.tracing else None
        self._observer = CallObserver(route.metrics, route.settings.call_records_dir, logs.bind_call(), route=ROUTE,
                                      history=route.history(), trace=trace)
        transcripts, state = route.transcripts, route.state
        transcripts.begin(self.call_id)
        if self._earlier:
            transcripts.carry_on(self.call_id, self._earlier)
        # Listed for GET /calls (on every instance, with Redis) beside the call, never before it.
        listed = asyncio.create_task(state.put_call(self.call_id, {**call_entry(self.call.parameters),
                                                                   "route": ROUTE}))
        try:
            self.dispatch(self._starting)
            self._spawn(self._ticker())
            self._spawn(self._discover_tools())
            await self._done.wait()
        finally:
            if self._sideband is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._sideband.close(), CLOSE_TIMEOUT_S)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            route.calls.discard(self)
            transcripts.end(self.call_id, handed_over=self._parked)  # parked: its feed goes on elsewhere
            self._observer.close()
            await self.tools.aclose()
            await asyncio.gather(listed, return_exceptions=True)  # listed first, so that the drop is last
            with contextlib.suppress(Exception):
                await state.drop_call(self.call_id, handed_over=self._parked)

    def end(self, reason: str) -> None:
        """The service is shutting down: hang the call up rather than leave it without tools."""
        log.info("call %s: ending: %s", self.call_id, reason)
        self._spawn(self._control(HangUp(reason)))

    async def park(self, lot: sip_parking.Lot) -> bool:
        """Shutdown: stops steering the call and leaves it in ``lot`` for another instance. The
        sideband is closed (which detaches only us: the call goes on at OpenAI); never hung up.
        False: it could not be parked, and the drain ends it as before."""
        if self.call.ended or self._parked:
            return False
        deadline = self.now() + PARK_TOOL_WAIT_S
        while len(self.call._tool_calls) and self.now() < deadline:  # their outputs still go out from here
            await asyncio.sleep(0.05)
        for task in self._tasks:  # nothing more happens here: the pump, the clock, the tools stop
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        sideband, self._sideband = self._sideband, None
        if sideband is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sideband.close(), CLOSE_TIMEOUT_S)
        saved = self.call.parked()  # before the record ends: what is still running, what waits
        self.dispatch(self.call.on_handing_over())
        self.dispatch(self.call.on_handoff_result(True, len(saved["conversation"])))  # its last turns published
        record = {**saved, "engine": self.engine.name, "call_id": self.call_id, "profile": self.call.profile.name,
                  "transcript": self.route.transcripts.turns(self.call_id),
                  "parked_by": self.route.state.instance, "parked_at": time.time(),
                  "expires_at": time.time() + self.route.settings.handoff_ttl_seconds}
        await self.route.state.flush(CLOSE_TIMEOUT_S)  # its turns reach the feed before the next instance adds to it
        if not await lot.park(record):
            log.error("call %s: could not be parked; hanging up", self.call_id)
            with contextlib.suppress(openai.APIError):
                await self.engine.hangup(self.call_id)
            self._done.set()
            return True  # ended here: nothing more for the drain to do
        self._parked = True
        log.info("call %s: parked for another instance (%s, %d transcript turns, %d tools running)",
                 self.call_id, self.engine.name, len(record["transcript"]), len(saved["pending_tools"]))
        self.route.metrics.handoffs.labels("handed_over").inc()
        self._done.set()
        return True

    # --- Actions into I/O ---

    def dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToRealtime):
                self._send(self.engine.dialect.serialize(action.command))
            elif isinstance(action, Record):
                self._observer.on_record(self.call, action)
                if action.kind == "transcript":
                    self.route.transcripts.publish(self.call_id, action.data)
            elif isinstance(action, RunTool):  # a task: the sideband never waits for a tool
                self._spawn(self._run_tool(action))
            elif isinstance(action, OpenRealtime):
                self._spawn(self._pump())
            elif isinstance(action, (HangUp, Transfer)):
                self._spawn(self._control(action))
            elif isinstance(action, EndStream):
                self._done.set()
            # ToTwilio: a call without media sends nothing to play

    def _send(self, text: str) -> None:
        if self._sideband is not None:
            self._sideband.send(text)
        elif len(self._held) < HELD_LIMIT:  # the server keeps the session: these still apply
            self._held.append(text)
        else:
            log.warning("call %s: sideband away; message dropped", self.call_id)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        task.add_done_callback(self._log_failure)
        self._tasks.append(task)

    def _log_failure(self, task: asyncio.Task) -> None:
        """A task of this call that died of a bug says so now, with the call's id (not when it is
        collected, with none): the sideband's pump dying silently left a call unsteered."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("call %s: %s failed", self.call_id, task.get_coro().__qualname__, exc_info=exc)

    async def _pump(self) -> None:
        url = self.engine.sideband_url(self.call_id)
        headers = {"Authorization": f"Bearer {self.route.api_key}"}
        try:
            sideband = await realtime_client.connect_to(url, headers, self.route.settings)
        except Exception as exc:  # refused, timed out, rejected handshake: the core hangs up
            log.error("call %s: cannot open the sideband: %s", self.call_id, exc)
            self.dispatch(self.call.on_realtime_closed(f"sideband connect failed: {exc}"))
            return
        self._sideband = sideband
        self.dispatch(self.call.on_realtime_open(self.now()))
        held, self._held = self._held, []
        for text in held:
            sideband.send(text)
        reason = "closed by OpenAI"
        try:
            while True:
                self._on_message(await sideband.recv())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
        self._sideband = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sideband.close(), CLOSE_TIMEOUT_S)
        over = getattr(sideband, "close_code", None) == NORMAL_CLOSURE
        self.dispatch(self.call.on_realtime_closed(reason, call_over=over,
                                                   close_code=getattr(sideband, "close_code", None)))

    def _on_message(self, text: str) -> None:
        self._observer.received("realtime")
        try:
            event = self.engine.dialect.decode(text)
        except rt.RealtimeProtocolError as exc:
            log.warning("call %s: bad sideband message: %s", self.call_id, exc)
            return
        self.dispatch(self.call.on_realtime(event, self.now()))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.dispatch(self.call.on_tick(self.now()))

    # --- Tools: the same runner as a Twilio stream's ---

    async def _discover_tools(self) -> None:
        """The tools of the call's MCP servers, offered once listed (the call never waits for them)."""
        self.dispatch(self.call.add_function_tools(await self.tools.discover()))

    async def _run_tool(self, action: RunTool) -> None:
        output, outcome = await self.tools.run(action)
        self.dispatch(self.call.on_tool_result(action.call_id, output, self.now(), outcome))

    async def _control(self, action: HangUp | Transfer) -> None:
        try:
            if isinstance(action, HangUp):
                log.info("call %s: hanging up: %s", self.call_id, action.loggable)
                await self.engine.hangup(self.call_id)
                self.dispatch(self.call.on_hung_up(action.reason, action.abnormal))
            else:
                target = sip.refer_uri(action.number)
                log.info("call %s: transferring to %s (SIP REFER)", self.call_id, target)
                await self.engine.refer(self.call_id, target)
                self.dispatch([Record("transferred", {"target": target})])
        except openai.APIError as exc:
            status = getattr(exc, "status_code", None)
            log.error("call %s: OpenAI refused %s (%s): %s", self.call_id, type(action).__name__,
                      status or type(exc).__name__, getattr(exc, "message", ""))
            if isinstance(action, HangUp):
                self.dispatch(self.call.on_hung_up(f"{action.reason} (hang-up refused)", action.abnormal))


def _claim_key(call_id: str) -> str:
    return f"openai_sip:{call_id}"


def _invite_key(sip_call_id: str) -> str:
    """The INVITE both engines' events came from (its SIP Call-ID: untrusted text, so hashed)."""
    return "openai_sip:invite:" + hashlib.sha256(sip_call_id.encode()).hexdigest()[:32]


_INCOMING_MODELS = {wire.INCOMING: RealtimeCallIncomingWebhookEvent,
                    live_sip.INCOMING: LiveTransportIncomingWebhookEvent,
                    live_sip.INCOMING_DEPRECATED: LiveCallIncomingWebhookEvent}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
