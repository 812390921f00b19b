"""Recordings of what each side heard, over real sockets: the simulator calls the real app, a
scripted Realtime server answers, and the recording lands in a directory or a real S3 API
(moto's server, in its own process). libsndfile (soundfile) reads what was written."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from conftest import running_app
from helpers import simulated_call, ulaw_silence, ulaw_tone
from s3_server import PART_MIN_BYTES, s3_server

from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.serve import recordings
from telephony.settings import Settings, SettingsError

TOKEN = "calls-token-for-recordings"
CALLER = ulaw_silence(1.0) + ulaw_tone(500, 0.3) + ulaw_silence(4.0)  # "mm-hmm" over the greeting


def settings(server, url: str) -> Settings:
    return Settings(twilio_validate_signatures=False, realtime_url=server.url, realtime_api_key="sk-test",
                    audio_codec="g711_ulaw", recordings_url=url, calls_api_token=TOKEN)


async def recorded_call(url: str, fetch=()):
    """One call, then the API asked for its recording with each of ``fetch``'s headers."""
    script = Script(response_ms=3000, speed=1.2, caller_transcripts=("Mm-hmm.",))
    async with ScriptedRealtimeServer(script) as server, running_app(settings(server, url)) as (app, host):
        sim = simulated_call(app, host, caller_audio=CALLER)
        result = await sim.run()
        for _ in range(100):  # the recording is finished just after the stream closes
            async with httpx.AsyncClient() as client:
                answers = [await client.get(f"http://{host}/calls/{sim.call_sid}/recording", headers=h)
                           for h in fetch]
            if not answers or answers[0].status_code != 404:
                break
            import asyncio
            await asyncio.sleep(0.05)
    return sim, result, answers


def edges(pcm: np.ndarray) -> list[float]:
    """Start and end (s) of each loud stretch, to the millisecond."""
    frames = np.abs(pcm[: len(pcm) // 8 * 8].astype(float)).reshape(-1, 8).max(axis=1) > 1000
    changes = np.flatnonzero(np.diff(frames.astype(int))) + 1
    return [round(float(c) / 1000, 3) for c in changes]


def check_recording(wav: bytes, result) -> None:
    info = soundfile.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels, info.subtype) == (8000, 2, "ULAW")
    audio, _ = soundfile.read(io.BytesIO(wav), dtype="int16")
    caller, agent = audio[:, 0], audio[:, 1]
    assert len(audio) / 8000 == pytest.approx(len(result.caller) / 8000, abs=0.3)  # the whole call
    # Each side as the phone had it: the caller's tone; the greeting, paused by it, then resumed.
    phone_caller, phone_agent = (pcm_of(result.caller), pcm_of(result.agent))
    recorded, phone = edges(caller) + edges(agent), edges(phone_caller) + edges(phone_agent)
    assert len(edges(caller)) == len(edges(phone_caller)) == 2
    # On, paused, on again, off; the scripted model streams only a little faster than real time,
    # so a loaded machine may starve the phone for a moment: the recording must show that gap too.
    assert len(edges(agent)) == len(edges(phone_agent)) and len(edges(agent)) in (4, 6, 8)
    # One clock for both sides: every edge is where the phone had it, give or take a 20 ms frame,
    # after one shift for the whole recording (it starts at the stream's start, the phone earlier).
    shift = np.median([r - p for r, p in zip(recorded, phone)])
    assert all(abs(r - p - shift) <= 0.02 for r, p in zip(recorded, phone)), (recorded, phone, shift)
    heard = edges(agent)
    assert sum(off - on for on, off in zip(heard[::2], heard[1::2])) == pytest.approx(3.0, abs=0.05)  # all, once
    assert len(wav) <= 1_000_000 * len(audio) / 8000 / 60  # at most 1 MB per call-minute


def pcm_of(ulaw: bytes) -> np.ndarray:
    import audioop
    return np.frombuffer(audioop.ulaw2lin(ulaw, 2), "<i2")


async def test_a_call_is_recorded_to_a_directory_and_served_with_ranges(tmp_path):
    url = f"file://{tmp_path}/rec"
    sim, result, (whole, part, none, wrong, tail) = await recorded_call(url, [
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}", "Range": "bytes=100-199"},
        {},
        {"Authorization": f"Bearer {TOKEN}", "Range": "bytes=99999999-"},
        {"Authorization": f"Bearer {TOKEN}", "Range": "bytes=-10"},
    ])
    (saved,) = list(Path(tmp_path, "rec", sim.call_sid).glob("*.wav"))
    assert saved.name.endswith(".wav") and sim.call_sid in str(saved)
    assert not list(Path(tmp_path, "rec", ".spool").iterdir())  # nothing left behind
    wav = saved.read_bytes()
    check_recording(wav, result)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    assert whole.content == wav and whole.headers["accept-ranges"] == "bytes"
    assert part.status_code == 206 and part.content == wav[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(wav)}"
    assert none.status_code == 401
    assert wrong.status_code == 416 and wrong.headers["content-range"] == f"bytes */{len(wav)}"
    assert tail.status_code == 206 and tail.content == wav[-10:]


async def test_a_call_is_recorded_to_s3_in_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(recordings, "S3_PART_BYTES", PART_MIN_BYTES)  # a short call, several parts
    with s3_server() as endpoint:
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        import boto3
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="calls")
        sim, result, (whole, ranged) = await recorded_call("s3://calls/recordings", [
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}", "Range": "bytes=0-61"},
        ])
        (obj,) = s3.list_objects_v2(Bucket="calls", Prefix=f"recordings/{sim.call_sid}/")["Contents"]
        wav = s3.get_object(Bucket="calls", Key=obj["Key"])["Body"].read()
        parts = s3.head_object(Bucket="calls", Key=obj["Key"], PartNumber=1).get("PartsCount")
    assert obj["Key"].endswith(".wav")
    assert parts is not None and parts >= len(wav) // PART_MIN_BYTES  # uploaded as the call went
    check_recording(wav, result)
    assert whole.status_code == 200 and whole.content == wav
    assert ranged.status_code == 206 and ranged.content == wav[:62]


async def test_a_profile_that_does_not_record_is_not_recorded(tmp_path, profile):
    from dataclasses import replace
    quiet = replace(profile, recording_enabled=False)
    async with ScriptedRealtimeServer(Script(response_ms=300)) as server, \
            running_app(settings(server, f"file://{tmp_path}"), quiet) as (app, host):
        await simulated_call(app, host, caller_audio=ulaw_silence(1.0)).run()
    assert not list(tmp_path.glob("CA*/*.wav"))


def test_the_consent_line_is_said_before_the_stream(profile):
    from telephony.wire.twiml import connect_stream
    xml = connect_stream("wss://x/y", {"call_sid": "CA1"}, "fallback", "This call may be recorded.")
    assert xml.index("<Say>This call may be recorded.</Say>") < xml.index("<Connect>")


@pytest.mark.parametrize("url", ["file://relative/dir", "s3://", "ftp://x/y", "/var/rec"])
def test_a_recordings_url_that_cannot_be_used_is_refused_at_start(url):
    from telephony.serve.app import check_configuration
    with pytest.raises((SettingsError, ValueError), match="RECORDINGS_URL|recordings_url"):
        check_configuration(Settings(twilio_validate_signatures=False, recordings_url=url))


async def test_a_hung_store_delays_no_new_call(tmp_path, monkeypatch):
    """An S3 that accepts connections and never answers holds every upload of a call that ends
    (boto3 waits its read timeout, then retries). Those waits must not take the threads that
    resolve host names for new connections: the next call reaches its model at once."""
    import asyncio
    import time

    from helpers import active_spans

    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    hung = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(recordings, "CLOSE_TIMEOUT_S", 2.0)  # the ended calls' teardown gives up soon
    try:
        async with ScriptedRealtimeServer(Script(response_ms=500)) as server:
            # A host name, not an address: connecting resolves it in the loop's default executor.
            named = Settings(**{**settings(server, "s3://calls/recordings").model_dump(),
                                "realtime_url": server.url.replace("127.0.0.1", "localhost")})
            async with running_app(named) as (app, host):
                ended = [simulated_call(app, host, caller_audio=ulaw_silence(0.8)) for _ in range(10)]
                await asyncio.gather(*(sim.run() for sim in ended))
                await asyncio.sleep(0.5)  # their uploads are under way, and hanging
                # Every store thread is waiting on the hung store (before they had their own pool,
                # these were the default executor's: 6 on a 2-CPU machine, all taken by 10 calls).
                assert len(held) >= min(len(ended), recordings.STORE_THREADS), len(held)
                started = time.monotonic()
                result = await simulated_call(app, host, caller_audio=ulaw_silence(2.0)).run()
                took = time.monotonic() - started
    finally:
        for writer in held:  # boto3's sockets reset: its threads stop waiting
            writer.transport.abort()
        hung.close()
    spans = active_spans(result.agent)
    assert spans and spans[0][0] < 1.0, (spans, took)  # the greeting came at once, not after a 30 s wait
