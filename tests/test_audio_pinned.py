"""The audio codec pinned where mutmut found the suite blind: rounding and saturation, empty and
torn input, the passthrough codec's length arithmetic, and the resamplers' state."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from telephony.core.audio import (
    Downsampler,
    Pcm16Codec,
    UlawPassthroughCodec,
    Upsampler,
    _to_int16,
    make_codec,
)


def test_samples_are_rounded_to_nearest_and_saturated_not_wrapped():
    x = np.array([0.6, -0.6, 1.5, 2.5, 40000.0, -40000.0, 32767.4], dtype=np.float32)
    assert np.frombuffer(_to_int16(x), "<i2").tolist() == [1, -1, 2, 2, 32767, -32768, 32767]


def test_a_loud_tone_clips_at_full_scale_instead_of_wrapping_around():
    t = np.arange(2400) / 24000
    loud = (40000 * np.sin(2 * np.pi * 440 * t)).clip(-32768, 32767).astype("<i2").tobytes()
    out = np.frombuffer(Downsampler().process(loud), "<i2").astype(int)
    assert out.max() >= 32000 and out.min() <= -32000
    assert np.abs(np.diff(out)).max() < 20000  # no jump from +32767 to -32768


@pytest.mark.parametrize("resampler", [Upsampler, Downsampler])
def test_nothing_in_gives_nothing_out(resampler):
    assert resampler().process(b"") == b""


def test_one_sample_in_gives_its_share_out():
    assert len(Upsampler().process(b"\x00\x10")) == 2 * 3
    assert len(Downsampler().process(b"\x00\x10" * 3)) == 2


def test_a_torn_sample_is_dropped_and_the_rest_counted():
    codec = Pcm16Codec()
    chunk = codec.model_to_caller(base64.b64encode(b"\x00\x10" * 24 + b"\x07").decode())
    assert chunk.model_ms == 1.0 and len(base64.b64decode(chunk.payload)) == 8
    chunk = codec.model_to_caller(base64.b64encode(b"\x00\x10" * 49 + b"\x07").decode())  # 99 bytes
    assert chunk.model_ms == 98 / 48


@pytest.mark.parametrize("direction", ["caller_to_model", "model_to_caller"])
def test_payloads_that_are_not_strict_base64_are_refused(direction):
    with pytest.raises(ValueError):
        getattr(Pcm16Codec(), direction)("AAAA*AAAA")  # lenient base64 would skip the "*"


def test_the_reset_downsampler_starts_afresh():
    t = np.arange(480) / 24000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    fresh = Downsampler().process(tone[:-2])
    used = Downsampler()
    used.process(tone[:-2])  # leaves history and a decimation phase of 1
    used.reset()
    assert used.process(tone[:-2]) == fresh


def test_the_reset_upsampler_starts_afresh():
    frame = (np.arange(160) * 100).astype("<i2").tobytes()
    fresh = Upsampler().process(frame)
    used = Upsampler()
    used.process(frame)
    used.reset()
    assert used.process(frame) == fresh


@pytest.mark.parametrize("raw_bytes", [1, 2, 3, 160, 161])
def test_passthrough_length_is_the_decoded_length(raw_bytes):
    delta = base64.b64encode(b"\xff" * raw_bytes).decode()
    chunk = UlawPassthroughCodec().model_to_caller(delta)
    assert chunk.payload == delta and chunk.model_ms == raw_bytes / 8
    assert isinstance(chunk.model_ms, float)


def test_passthrough_has_no_tail_and_an_empty_delta_is_no_audio():
    codec = UlawPassthroughCodec()
    assert codec.end_of_item() == "" and codec.model_to_caller("").model_ms == 0


def test_an_unknown_codec_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown audio codec 'opus' \\(expected pcm16 or g711_ulaw\\)"):
        make_codec("opus")
