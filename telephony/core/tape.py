"""A call's recording as each side heard it: stereo μ-law 8 kHz, caller left, agent right.

Sans-I/O like the call core: the bridge tells the tape what arrived from the caller and what it
sent Twilio to play, with clock readings, and takes finished blocks of interleaved samples to
write. The agent's side is what Twilio played, not what the model made: audio sent to Twilio
plays from the moment its buffer reaches it, at real time, and a ``clear`` drops what had not
played, so the right channel is cut at a barge-in, paused and resumed as the caller heard it,
and silent where nothing played. The caller's side is placed by Twilio's own media timestamps
(anchored at the least-delayed frame's arrival), so jitter does not move it and a lost frame
stays a gap.

Only what may still change is held: the agent audio queued ahead of the clock (as Twilio holds
it) and the last ``LAG_MS`` of the caller (frames can arrive that late). Everything before is
handed out by ``take``: a call is never held whole in memory. μ-law is the phone's own audio,
kept byte for byte (no transcoding), at 16 kB a second: 0.96 MB a call-minute.
"""

from __future__ import annotations

import base64
import binascii
import struct

RATE = 8000
SAMPLES_PER_MS = RATE // 1000
LAG_MS = 200  # caller audio this late is still placed; later, it is dropped
SILENCE = 0xFF  # μ-law zero
WAVE_FORMAT_MULAW = 7


class Tape:
    def __init__(self, started: float) -> None:
        self.started = started
        self._cursor = 0  # sample position of the first sample not handed out
        self._left = bytearray()  # caller, from the cursor on
        self._right = bytearray()  # agent as played, from the cursor on
        self._agent_end = 0  # where Twilio's buffer runs out (absolute sample position)
        self._anchor: int | None = None  # caller sample position of Twilio's timestamp 0
        self.late_samples = 0  # caller audio that came after it had been written

    @property
    def seconds(self) -> float:
        """How much has been handed out so far."""
        return self._cursor / RATE

    def _position(self, now: float) -> int:
        return max(0, round((now - self.started) * RATE))

    def caller(self, payload: str, timestamp_ms: int, now: float) -> None:
        """A caller frame (base64 μ-law) that Twilio stamped ``timestamp_ms`` into the stream."""
        try:
            audio = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return  # the core logs and drops it too
        # A frame's audio began a frame's length before it could be sent; the frame that came
        # soonest after that says best where Twilio's clock sits on ours: the anchor only moves
        # earlier (a late frame says nothing but that it was late).
        anchor = self._position(now) - len(audio) - timestamp_ms * SAMPLES_PER_MS
        if self._anchor is None or anchor < self._anchor:
            self._anchor = anchor
        at = self._anchor + timestamp_ms * SAMPLES_PER_MS
        _put(self._left, at - self._cursor, audio, self)

    def agent(self, payload: str, now: float) -> None:
        """Agent audio sent to Twilio: it plays once what is queued ahead of it has played."""
        try:
            audio = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return
        start = max(self._agent_end, self._position(now), self._cursor)
        _put(self._right, start - self._cursor, audio, self)
        self._agent_end = start + len(audio)

    def cleared(self, now: float) -> None:
        """Twilio dropped its buffer: nothing after ``now`` of what was queued is heard."""
        cut = max(self._position(now), self._cursor)
        if self._agent_end > cut:
            del self._right[cut - self._cursor:]
            self._agent_end = cut

    def take(self, now: float) -> bytes:
        """Interleaved stereo samples that can no longer change (up to ``LAG_MS`` ago)."""
        return self._emit(self._position(now) - LAG_MS * SAMPLES_PER_MS)

    def finish(self, now: float) -> bytes:
        """The rest, up to ``now`` (the call is over: nothing more will be heard)."""
        return self._emit(self._position(now))

    def _emit(self, upto: int) -> bytes:
        n = upto - self._cursor
        if n <= 0:
            return b""
        left, right = _exactly(self._left, n), _exactly(self._right, n)
        out = bytearray(2 * n)
        out[0::2], out[1::2] = left, right
        del self._left[:n], self._right[:n]
        self._cursor = upto
        return bytes(out)


def _put(track: bytearray, offset: int, audio: bytes, tape: Tape) -> None:
    """Writes ``audio`` at ``offset`` samples into ``track`` (silence filling any gap)."""
    if offset < 0:  # partly before the cursor: that part was written already
        tape.late_samples += min(len(audio), -offset)
        audio, offset = audio[-offset:], 0
    if offset > len(track):
        track.extend(b"\xff" * (offset - len(track)))
    track[offset:offset + len(audio)] = audio


def _exactly(track: bytearray, n: int) -> bytes:
    if len(track) >= n:
        return bytes(track[:n])
    return bytes(track) + b"\xff" * (n - len(track))


def wav_header(data_bytes: int) -> bytes:
    """A RIFF/WAVE header for stereo μ-law at 8 kHz and ``data_bytes`` of samples (browsers play
    it, libsndfile reads it). Non-PCM formats carry a ``fact`` chunk with the frame count."""
    channels, bits = 2, 8
    fmt = struct.pack("<HHIIHHH", WAVE_FORMAT_MULAW, channels, RATE, RATE * channels, channels, bits, 0)
    fact = struct.pack("<I", data_bytes // channels)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
            + b"data" + struct.pack("<I", data_bytes))
    return b"RIFF" + struct.pack("<I", len(body) + data_bytes) + body
