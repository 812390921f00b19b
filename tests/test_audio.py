"""Audio conversion measured with real signals and an FFT."""

from __future__ import annotations

import audioop
import base64

import numpy as np
import pytest

from telephony.core.audio import (
    Downsampler,
    Pcm16Codec,
    UlawPassthroughCodec,
    Upsampler,
)


def tone(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")


def framed(converter, signal: np.ndarray, frame: int) -> np.ndarray:
    out = b"".join(converter.process(signal[i:i + frame].tobytes()) for i in range(0, len(signal), frame))
    return np.frombuffer(out, dtype="<i2").astype(np.float64)


def spectrum_peak(x: np.ndarray, rate: int) -> tuple[float, float]:
    """(frequency of the strongest bin, the amplitude of the sine around it)."""
    window = np.hanning(len(x))
    mag = np.abs(np.fft.rfft(x * window))
    k = int(np.argmax(mag))
    # Energy of the main lobe (Parseval), so the level does not depend on where the bin falls.
    lobe = np.sum(mag[max(k - 4, 0):k + 5] ** 2)
    amplitude = np.sqrt(2 * lobe / (len(x) * np.sum(window ** 2)) * 2)
    return k * rate / len(x), float(amplitude)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2)))


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_downsampling_keeps_pitch_and_level(freq):
    out = framed(Downsampler(), tone(freq, 24000, 1.0), 480)
    assert len(out) == 8000
    peak_freq, amp = spectrum_peak(out[400:], 8000)
    assert abs(peak_freq - freq) < 3
    assert amp == pytest.approx(10000, rel=0.02)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_upsampling_keeps_pitch_and_level(freq):
    out = framed(Upsampler(), tone(freq, 8000, 1.0), 160)
    assert len(out) == 24000
    peak_freq, amp = spectrum_peak(out[1200:], 24000)
    assert abs(peak_freq - freq) < 3
    assert amp == pytest.approx(10000, rel=0.02)
    # Nothing but the tone: the images at 8k±f are filtered out.
    mag = np.abs(np.fft.rfft(out[1200:] * np.hanning(len(out) - 1200)))
    image = mag[int((8000 - freq) / 24000 * len(out[1200:]))]
    assert 20 * np.log10(image / mag.max()) < -60


def test_six_khz_is_rejected_by_more_than_60_db_going_down():
    out = framed(Downsampler(), tone(6000, 24000, 1.0), 480)
    level_db = 20 * np.log10(max(rms(out[400:]), 1e-3) / (10000 / np.sqrt(2)))
    assert level_db <= -60
    # The reason we do not use audioop.ratecv: it folds 6 kHz to 2 kHz at nearly full level.
    folded, _ = audioop.ratecv(tone(6000, 24000, 1.0).tobytes(), 2, 1, 24000, 8000, None)
    folded = np.frombuffer(folded, dtype="<i2").astype(np.float64)
    peak_freq, amp = spectrum_peak(folded[400:], 8000)
    assert abs(peak_freq - 2000) < 5 and 20 * np.log10(amp / 10000) > -10


@pytest.mark.parametrize("cls,rate,frame", [(Downsampler, 24000, 480), (Upsampler, 8000, 160)])
def test_frames_join_without_discontinuity(cls, rate, frame):
    signal = tone(1234.5, rate, 0.5)
    whole = np.frombuffer(cls().process(signal.tobytes()), dtype="<i2")
    by_frame = framed(cls(), signal, frame)
    assert np.array_equal(whole, by_frame.astype("<i2"))
    # Odd frame sizes too (the model's deltas are not 20 ms multiples).
    odd = framed(cls(), signal, 337)
    assert np.array_equal(whole, odd.astype("<i2"))


def test_codec_round_trip_through_mulaw_keeps_the_tone():
    codec = Pcm16Codec()
    caller = audioop.lin2ulaw(tone(700, 8000, 1.0).tobytes(), 2)
    up = b"".join(base64.b64decode(codec.caller_to_model(base64.b64encode(caller[i:i + 160]).decode()))
                  for i in range(0, len(caller), 160))
    x = np.frombuffer(up, "<i2").astype(np.float64)
    f, amp = spectrum_peak(x[1200:], 24000)
    assert abs(f - 700) < 3 and amp == pytest.approx(10000, rel=0.03)

    agent = base64.b64encode(tone(700, 24000, 1.0).tobytes()).decode()
    chunk = codec.model_to_caller(agent)
    assert chunk.model_ms == pytest.approx(1000)
    ulaw = base64.b64decode(chunk.payload) + base64.b64decode(codec.end_of_item())
    y = np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2").astype(np.float64)
    assert len(y) == pytest.approx(8000 + 16, abs=1)  # + the filter's 2 ms tail
    f, amp = spectrum_peak(y[400:], 8000)
    assert abs(f - 700) < 3 and amp == pytest.approx(10000, rel=0.03)


def test_passthrough_codec_leaves_payload_untouched_and_counts_ms():
    codec = UlawPassthroughCodec()
    payload = base64.b64encode(bytes(range(160)) * 5).decode()
    assert codec.caller_to_model(payload) is payload
    chunk = codec.model_to_caller(payload)
    assert chunk.payload is payload and chunk.model_ms == 100
    odd = base64.b64encode(b"\x01" * 161).decode()
    assert codec.model_to_caller(odd).model_ms == pytest.approx(161 / 8)
