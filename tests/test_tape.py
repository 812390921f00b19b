"""The recording's tape, message by message with a fake clock: where each side's audio lands."""

from __future__ import annotations

import base64

from telephony.core.tape import LAG_MS, Tape, wav_header


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def channels(stereo: bytes) -> tuple[bytes, bytes]:
    return stereo[0::2], stereo[1::2]


def test_the_caller_is_placed_by_twilios_timestamps_not_by_arrival():
    """A frame's audio began a frame before it arrived; later frames go by their timestamps."""
    tape = Tape(started=10.0)
    tape.caller(b64(b"\x01" * 160), 0, 10.52)  # sent once recorded: its audio began at 10.50
    tape.caller(b64(b"\x02" * 160), 40, 10.6)  # 20 ms frame lost in between; arrives late
    tape.caller(b64(b"\x03" * 160), 20, 10.6)  # the lost one, after its successor
    left, right = channels(tape.finish(10.6))
    assert left[:4000] == b"\xff" * 4000  # silence before the stream's first frame
    assert left[4000:4480] == b"\x01" * 160 + b"\x03" * 160 + b"\x02" * 160
    assert right == b"\xff" * len(right)


def test_the_agent_plays_as_twilio_plays_it_queued_then_cut_by_a_clear():
    tape = Tape(started=0.0)
    tape.agent(b64(b"\x10" * 800), 1.0)  # 100 ms, plays from 1.0
    tape.agent(b64(b"\x20" * 800), 1.0)  # queued behind it: from 1.1
    tape.cleared(1.15)  # the caller heard 150 ms of it
    tape.agent(b64(b"\x30" * 80), 2.0)  # after the clear: from 2.0
    _, right = channels(tape.finish(2.5))
    assert right[8000:9200] == b"\x10" * 800 + b"\x20" * 400
    assert right[9200:16000] == b"\xff" * 6800  # the rest of the second chunk was never heard
    assert right[16000:16080] == b"\x30" * 80
    assert len(right) == 20000


def test_blocks_come_out_once_final_and_never_overlap():
    tape = Tape(started=0.0)
    out = b""
    for k in range(100):  # 2 s of caller frames, taken every 100 ms
        tape.caller(b64(bytes([k % 250 + 1]) * 160), 20 * k, 0.02 * (k + 1))
        if k % 5 == 0:
            block = tape.take(0.02 * k)
            out += block
    out += tape.take(2.0)
    # take() keeps the last LAG_MS back: a caller frame that late still lands in place.
    assert len(out) == 2 * (2000 - LAG_MS) * 8
    out += tape.finish(2.0)
    left, _ = channels(out)
    assert left == b"".join(bytes([k % 250 + 1]) * 160 for k in range(100))
    assert tape.late_samples == 0


def test_caller_audio_later_than_the_lag_is_dropped_and_counted():
    tape = Tape(started=0.0)
    tape.caller(b64(b"\x01" * 160), 0, 0.02)
    tape.take(1.0)  # written up to 1.0 - LAG
    tape.caller(b64(b"\x02" * 160), 100, 1.0)  # 100 ms into the stream: too late now
    assert tape.late_samples == 160


def test_the_wav_header_says_stereo_mulaw_at_8_khz():
    header = wav_header(32000)
    assert header[:4] == b"RIFF" and header[8:12] == b"WAVE"
    assert int.from_bytes(header[4:8], "little") == len(header) - 8 + 32000
    assert int.from_bytes(header[20:22], "little") == 7  # WAVE_FORMAT_MULAW
    assert int.from_bytes(header[22:24], "little") == 2 and int.from_bytes(header[24:28], "little") == 8000
    assert header[-8:-4] == b"data" and int.from_bytes(header[-4:], "little") == 32000
