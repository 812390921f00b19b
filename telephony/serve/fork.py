"""The asyncio shell of a transcribed call between people: one Twilio fork, two transcription sessions.

``ForkTranscription`` (``telephony.core.transcription``) decides; ``ForkBridge`` reads the fork's
frames, opens a transcription session (``intent=transcription``) per track and writes what the core
returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Callable

from starlette.websockets import WebSocket

from telephony.core.actions import Record
from telephony.core.transcription import SPEAKERS, ForkTranscription
from telephony.serve.direct_lane import payload
from telephony.serve.realtime_client import RealtimeTransport
from telephony.serve.upstream import Connector
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

log = logging.getLogger("telephony.fork")


class ForkBridge:
    """Reads the fork's frames, feeds each track's session, hands transcript records on."""

    def __init__(self, ws: WebSocket, core: ForkTranscription, dialect: rt.Dialect,
                 connector: Connector, on_record: Callable[[Record], None]) -> None:
        self.ws, self.core, self.dialect, self.connector, self.on_record = ws, core, dialect, connector, on_record
        self._loop = asyncio.get_running_loop()
        self._upstreams: dict[str, RealtimeTransport] = {}
        self._tasks: list[asyncio.Task] = []
        self._closing: asyncio.Task | None = None

    def _send(self, commands: list[tuple[str, rt.Command]]) -> None:
        for track, command in commands:
            upstream = self._upstreams.get(track)
            if upstream is not None and not upstream.send(json.dumps(self.dialect.encode(command))):
                log.warning("call %s: %s transcription session is not reading; audio dropped",
                            self.core.call_sid, track)

    def _records(self, records: list[Record]) -> None:
        for record in records:
            self.on_record(record)

    def end(self, reason: str) -> None:
        """Stops transcribing (shutdown); the call between the people goes on without us."""
        log.info("call %s: ending the transcription stream: %s", self.core.call_sid, reason)
        if self._closing is None:
            self._closing = asyncio.create_task(self._going_away())

    async def _going_away(self) -> None:
        with contextlib.suppress(Exception):  # already closing: nothing to do
            await self.ws.close(1001)

    async def _start(self, start: tw.Start) -> bool:
        self._records(self.core.on_start(start, self._loop.time()))
        if self.core.refused:
            await self.ws.close(code=1008, reason="stream refused")
            return False
        self._tasks += [asyncio.create_task(self._session(t)) for t in SPEAKERS]
        return True

    async def run(self, start: tw.Start | None = None) -> None:
        """Serves the fork; ``start``: its start, when the shell read (and verified) it already."""
        try:
            if start is not None and not await self._start(start):
                return
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    event = tw.parse(payload(message))
                except tw.TwilioProtocolError as exc:
                    log.warning("call %s: bad Twilio message: %s", self.core.call_sid or "?", exc)
                    continue
                if isinstance(event, tw.Start) and self.core.call_sid is None:
                    if not await self._start(event):
                        return
                elif isinstance(event, tw.Media):
                    self._send(self.core.on_media(event))
                elif isinstance(event, tw.Stop):
                    break
        finally:
            await self._close()

    async def _session(self, track: str) -> None:
        try:
            upstream = await self.connector()
        except Exception as exc:
            log.error("call %s: cannot open the %s transcription session: %s", self.core.call_sid, track, exc)
            return
        self._upstreams[track] = upstream
        self._send(self.core.on_session_open(track))
        try:
            while True:
                try:
                    event = self.dialect.decode(await upstream.recv())
                except rt.RealtimeProtocolError as exc:
                    log.warning("call %s: bad %s transcription message: %s", self.core.call_sid, track, exc)
                    continue
                self._records(self.core.on_session_event(track, event, self._loop.time()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("call %s: %s transcription session closed: %s", self.core.call_sid, track, exc)
        finally:
            self._upstreams.pop(track, None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(upstream.close(), 0.5)

    async def _close(self) -> None:
        # The last words of each track are still being transcribed: give them a moment.
        self._send([(track, rt.CommitAudio()) for track in self.core.open])
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TRANSCRIBE_TAIL_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


TRANSCRIBE_TAIL_S = 1.5
