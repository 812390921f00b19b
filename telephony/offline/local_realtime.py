"""Shells around the local Realtime engine: an in-process transport and a websocket server.

Both run the same ``EngineRunner``: it feeds client text to the engine, wakes up when the
engine's next audio delta is due, and hands every server event out in order. The in-process
transport is what ``REALTIME_URL=local`` connects to (no socket at all); the websocket
server is ``telephony realtime-server``, for any Realtime client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import replace
from typing import Any, Awaitable, Callable

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve

from telephony.offline.local_engine import EngineConfig, RealtimeEngine, SpeakingPersona, ToolCue, TranscriptionJob
from telephony.offline.recognizer import Recognizer, default_recognizer
from telephony.offline.voices import Voice, make_voice

log = logging.getLogger("telephony.local_realtime")

Observer = Callable[[str, dict[str, Any]], None]  # ("client" | "server", event)


class EngineRunner:
    """Drives one engine on the running loop's clock, and runs its slow transcriptions in a
    thread (one at a time, so transcripts come out in the order of the turns)."""

    def __init__(self, engine: RealtimeEngine, deliver: Callable[[dict[str, Any]], None]) -> None:
        self.engine = engine
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._jobs: asyncio.Queue[TranscriptionJob] = asyncio.Queue()
        for event in engine.open(self._loop.time()):
            deliver(event)
        self._task = self._loop.create_task(self._pace())
        self._transcriber = self._loop.create_task(self._transcribe())

    def feed(self, text: str | bytes) -> None:
        for event in self.engine.receive(text, self._loop.time()):
            self._deliver(event)
        self._queue_jobs()
        self._wake.set()  # the schedule may have changed (a response started or was cancelled)

    def _queue_jobs(self) -> None:
        for job in self.engine.take_jobs():
            self._jobs.put_nowait(job)

    async def _transcribe(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                text = await asyncio.to_thread(self.engine.transcribe, job)
            except Exception as exc:  # a broken recogniser costs the transcript, not the session
                log.warning("transcription failed: %r", exc)
                events = self.engine.transcription_failed(job, str(exc) or type(exc).__name__, self._loop.time())
            else:
                events = self.engine.transcribed(job, text, self._loop.time())
            for event in events:
                self._deliver(event)

    async def _pace(self) -> None:
        while True:
            due = self.engine.next_due()
            delay = None if due is None else due - self._loop.time()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            for event in self.engine.advance(self._loop.time()):
                self._deliver(event)
            self._queue_jobs()  # a VAD turn ends only in receive today; cheap to check here too

    def close(self) -> None:
        self._task.cancel()
        self._transcriber.cancel()  # a decode under way finishes in its thread; its result is dropped


class LocalTransport:
    """A ``RealtimeTransport`` whose far end is an engine in this process."""

    def __init__(self, engine: RealtimeEngine, observer: Observer | None = None) -> None:
        self._observer = observer
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed = False
        self._runner = EngineRunner(engine, self._deliver)

    def _deliver(self, event: dict[str, Any]) -> None:
        if self._observer:
            self._observer("server", event)
        self._out.put_nowait(json.dumps(event))

    def send(self, text: str) -> bool:
        if self._closed:
            return True  # dropped, as on a closed socket: recv reports the close
        if self._observer:
            with contextlib.suppress(ValueError):
                self._observer("client", json.loads(text))
        self._runner.feed(text)
        return True

    async def recv(self) -> str:
        text = await self._out.get()
        if text is None:
            raise ConnectionError("local Realtime session is closed")
        return text

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._runner.close()
            self._out.put_nowait(None)


def local_connector(voice: Voice | None = None, config: EngineConfig | None = None,
                    observer: Observer | None = None, greeting: str = "", dialect: str = "beta",
                    transcription: bool = False, tool_cue: ToolCue | None = None,
                    recognizer: Recognizer | None = None) -> Callable[[], Awaitable[LocalTransport]]:
    """A bridge ``Connector`` for ``REALTIME_URL=local``: a fresh engine session per call.

    The persona is shared by the calls: it holds only the voice and its cache of rendered
    lines, which are rendered here, before any call, so no caller waits for synthesis, and the
    recogniser (default: pocketsphinx when installed), whose model is loaded here too.
    """
    persona = SpeakingPersona(voice or make_voice(), tool_cue, recognizer or default_recognizer())
    persona.warm(greeting)
    config = replace(config or EngineConfig(), dialect=dialect, transcription=transcription)

    async def connect() -> LocalTransport:
        return LocalTransport(RealtimeEngine(persona, config, "sess_" + uuid.uuid4().hex[:20]), observer)

    return connect


class ServedSession:
    """What a hook may do to a session while it is served: send raw text, or go silent."""

    def __init__(self, out: asyncio.Queue[str], runner: EngineRunner, writer: asyncio.Task) -> None:
        self._out, self._runner, self._writer = out, runner, writer

    def send_raw(self, text: str) -> None:
        self._out.put_nowait(text)

    def go_silent(self) -> None:
        self._runner.close()
        self._writer.cancel()


AfterMessage = Callable[[int, ServedSession], Awaitable[bool]]  # (messages so far, session) → stop?


async def run_session(ws: ServerConnection, engine: RealtimeEngine, observer: Observer | None = None,
                      after_message: AfterMessage | None = None) -> None:
    """Serves one websocket connection until the client goes away (or ``after_message`` says stop)."""
    out: asyncio.Queue[str] = asyncio.Queue()

    def deliver(event: dict[str, Any]) -> None:
        if observer:
            observer("server", event)
        out.put_nowait(json.dumps(event))

    async def write() -> None:  # the single writer keeps server events in order
        while True:
            await ws.send(await out.get())

    runner = EngineRunner(engine, deliver)
    writer = asyncio.create_task(write())
    served = ServedSession(out, runner, writer)
    try:
        n = 0
        async for message in ws:
            if observer:
                with contextlib.suppress(ValueError):
                    observer("client", json.loads(message))
            runner.feed(message)
            n += 1
            if after_message is not None and await after_message(n, served):
                break
    except websockets.ConnectionClosed:
        pass
    finally:
        runner.close()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await writer


class RealtimeServer:
    """``async with RealtimeServer() as server:`` a local Realtime service at ``server.url``.

    Any path and any key are accepted (it is a local test service); one engine per connection.
    """

    def __init__(self, voice: Voice | None = None, config: EngineConfig | None = None,
                 host: str = "127.0.0.1", port: int = 0, recognizer: Recognizer | None = None) -> None:
        self.persona = SpeakingPersona(voice or make_voice(), recognizer=recognizer or default_recognizer())
        self.config = config
        self.host, self.port = host, port
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    async def __aenter__(self) -> "RealtimeServer":
        self.persona.warm()
        # "realtime" is the subprotocol browsers offer alongside their key; accept it as OpenAI does.
        self._server = await serve(self._serve, self.host, self.port, max_size=2**24, compression=None,
                                   select_subprotocol=_accept_realtime_subprotocol)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def _serve(self, ws: ServerConnection) -> None:
        dialect = dialect_of(ws)
        transcription = "intent=transcription" in ws.request.path
        log.info("realtime session from %s (%s, %s dialect)", ws.remote_address, ws.request.path, dialect)
        config = replace(self.config or EngineConfig(), dialect=dialect, transcription=transcription)
        engine = RealtimeEngine(self.persona, config, "sess_" + uuid.uuid4().hex[:20])
        await run_session(ws, engine)


def _accept_realtime_subprotocol(ws: ServerConnection, offered) -> str | None:
    return "realtime" if "realtime" in offered else None  # servers need no subprotocol at all


def dialect_of(ws: ServerConnection) -> str:
    """Tells the dialects apart as the real services do: Live by its path (``/v1/live/sessions``);
    the beta protocol is asked for with the
    ``OpenAI-Beta: realtime=v1`` header or, from browsers, the ``openai-beta.realtime-v1``
    subprotocol; anything else is GA."""
    if ws.request.path.split("?")[0].rstrip("/").endswith("/live/sessions"):
        return "live"
    headers = ws.request.headers
    offered = ",".join(headers.get_all("Sec-WebSocket-Protocol"))
    if "realtime=v1" in headers.get("OpenAI-Beta", "") or "openai-beta.realtime-v1" in offered:
        return "beta"
    return "ga"
