"""Transcribing calls between people: a one-way fork of both tracks, no agent.

``<Start><Stream track="both_tracks">`` sends Twilio's ``inbound`` track (the caller) and
``outbound`` track (the party the call was forwarded to) on one websocket. Each track goes to a
transcription session of its own (``intent=transcription``), so every transcript turn says who
spoke. ``ForkTranscription`` is the sans-I/O core; ``ForkBridge`` is its asyncio shell.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
from typing import Awaitable, Callable

from starlette.websockets import WebSocket

from . import realtime as rt
from . import twilio_wire as tw
from .actions import Record
from .audio import make_codec
from .direct_lane import payload
from .profile import Profile
from .realtime_client import RealtimeTransport

log = logging.getLogger("telephony.fork")

SPEAKERS = {"inbound": "caller", "outbound": "callee"}
EARLY_AUDIO_FRAMES = 100  # per track, while its session connects


class ForkTranscription:
    """The state of one forked call. Returns plain data: (track, command) pairs and records."""

    def __init__(self, profile: Profile, audio_codec: str = "pcm16",
                 verify_start: Callable[[tw.Start], str | None] | None = None) -> None:
        self.profile = profile
        self.verify_start = verify_start
        self.refused: str | None = None
        self.codecs = {track: make_codec(audio_codec) for track in SPEAKERS}
        self.call_sid: str | None = None
        self.started_at = 0.0
        self.open: set[str] = set()
        self._early: dict[str, list[str]] = {track: [] for track in SPEAKERS}
        self.ended = False

    def on_start(self, event: tw.Start, now: float) -> list[Record]:
        """Records of the start; when the stream is refused, ``refused`` says why (open nothing)."""
        self.call_sid, self.started_at = event.call_sid, now
        self.refused = self.verify_start(event) if self.verify_start is not None else None
        if self.refused:
            log.warning("call %s: transcription stream refused: %s", event.call_sid, self.refused)
            return [Record("refused", {"reason": self.refused})]
        return [Record("start", {"call_sid": event.call_sid, "stream_sid": event.stream_sid,
                                 "kind": "transcription", "tracks": list(event.tracks)})]

    def on_media(self, event: tw.Media) -> list[tuple[str, rt.Command]]:
        track = event.track.removesuffix("_track")
        if track not in SPEAKERS or self.call_sid is None:
            return []
        try:
            audio = self.codecs[track].caller_to_model(event.payload)
        except (binascii.Error, ValueError) as exc:
            log.warning("call %s: %s media payload is not base64 (%s); dropped", self.call_sid, track, exc)
            return []
        if track not in self.open:
            if len(self._early[track]) < EARLY_AUDIO_FRAMES:
                self._early[track].append(audio)
            return []
        return [(track, rt.AppendAudio(audio))]

    def on_session_open(self, track: str) -> list[tuple[str, rt.Command]]:
        self.open.add(track)
        config = self.profile.transcription_config(self.codecs[track].model_format)
        early, self._early[track] = self._early[track], []
        return [(track, rt.ConfigureTranscription(config))] + [(track, rt.AppendAudio(a)) for a in early]

    def on_session_event(self, track: str, event: rt.Event, now: float) -> list[Record]:
        if isinstance(event, rt.InputTranscript) and event.transcript.strip():
            return [Record("transcript", {"speaker": SPEAKERS[track], "item_id": event.item_id,
                                          "text": event.transcript, "at": round(now - self.started_at, 3)})]
        if isinstance(event, rt.RealtimeError):
            log.log(logging.INFO if event.benign else logging.ERROR,
                    "call %s: %s transcription error %s/%s (event %s): %s", self.call_sid, track,
                    event.type, event.code, event.event_id, event.message)
        return []


Connector = Callable[[], Awaitable[RealtimeTransport]]


class ForkBridge:
    """Reads the fork's frames, feeds each track's session, hands transcript records on."""

    def __init__(self, ws: WebSocket, core: ForkTranscription, dialect: rt.Dialect,
                 connector: Connector, on_record: Callable[[Record], None]) -> None:
        self.ws, self.core, self.dialect, self.connector, self.on_record = ws, core, dialect, connector, on_record
        self._loop = asyncio.get_running_loop()
        self._upstreams: dict[str, RealtimeTransport] = {}
        self._tasks: list[asyncio.Task] = []

    def _send(self, commands: list[tuple[str, rt.Command]]) -> None:
        for track, command in commands:
            upstream = self._upstreams.get(track)
            if upstream is not None and not upstream.send(json.dumps(self.dialect.encode(command))):
                log.warning("call %s: %s transcription session is not reading; audio dropped",
                            self.core.call_sid, track)

    def _records(self, records: list[Record]) -> None:
        for record in records:
            self.on_record(record)

    async def run(self) -> None:
        try:
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
                    self._records(self.core.on_start(event, self._loop.time()))
                    if self.core.refused:
                        await self.ws.close(code=1008, reason="stream refused")
                        return
                    self._tasks += [asyncio.create_task(self._session(t)) for t in SPEAKERS]
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
