"""The core of a transcribed call between people (a one-way fork of both tracks, no agent).

``<Start><Stream track="both_tracks">`` sends Twilio's ``inbound`` track (the caller) and
``outbound`` track (the party the call was forwarded to) on one websocket. Each track goes to a
transcription session of its own, so every transcript turn says who spoke. Sans I/O: the shell
(``telephony.serve.fork``) reads and writes; this object decides.
"""

from __future__ import annotations

import binascii
import logging
from typing import Callable

from telephony.core.actions import Record
from telephony.core.audio import make_codec
from telephony.core.profile import Profile
from telephony.wire import realtime as rt
from telephony.wire import twilio as tw

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
