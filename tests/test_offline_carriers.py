"""`telephony simulate --carrier` and `telephony demo --carrier` as a user runs them, for every
carrier: a subprocess against the real app on a loopback port, each carrier's webhook signed with
its own credential (and refused when the simulator holds the wrong one), its markup read, its
media websocket played; the verdict taken from the recorded WAV by FFT, not from logs."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import subprocess
import sys
import wave

import numpy as np
import pytest
from conftest import ROOT, running_app
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from telephony.offline.callers import CARRIERS, DialError
from telephony.offline.callers import plivo as plivo_caller
from telephony.offline.callers import telnyx as telnyx_caller
from telephony.offline.scripted_realtime import Script, ScriptedRealtimeServer
from telephony.offline.wavfile import read_call
from telephony.settings import Settings

CARRIER_NAMES = ("twilio", "telnyx", "plivo", "signalwire", "vonage")
CREDENTIAL_VARIABLES = ("TWILIO_AUTH_TOKEN", "PLIVO_AUTH_TOKEN", "SIGNALWIRE_SIGNING_KEY", "TELNYX_PRIVATE_KEY",
                        "TELNYX_PUBLIC_KEY", "VONAGE_SIGNATURE_SECRET", "PUBLIC_URL")
RATE = 8000
TONE_AT_S, TONE_S, TONE_HZ = 1.0, 0.6, 500.0


def test_every_carrier_the_service_speaks_has_a_caller():
    assert set(CARRIER_NAMES) <= set(CARRIERS)


def clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without any carrier credential, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    return {**env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


class Credentials:
    """One carrier's credential, made here (not by the code under test): the service's setting,
    and what the simulator is given (environment and command-line options)."""

    def __init__(self, carrier: str, tmp_path, wrong: bool = False) -> None:
        self.settings: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.args: list[str] = []
        secret = secrets.token_hex(16)
        other = secrets.token_hex(16) if wrong else secret
        if carrier == "twilio":
            self.settings["twilio_auth_token"], self.env["TWILIO_AUTH_TOKEN"] = secret, other
        elif carrier == "plivo":
            self.settings["plivo_auth_token"], self.env["PLIVO_AUTH_TOKEN"] = secret, other
        elif carrier == "signalwire":
            self.settings["signalwire_signing_key"], self.env["SIGNALWIRE_SIGNING_KEY"] = secret, other
        elif carrier == "vonage":
            self.settings["vonage_signature_secret"], self.env["VONAGE_SIGNATURE_SECRET"] = secret, other
        else:
            service_key = Ed25519PrivateKey.generate()
            simulator_key = Ed25519PrivateKey.generate() if wrong else service_key
            self.settings["telnyx_public_key"] = base64.b64encode(
                service_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
            if wrong:  # the key itself in TELNYX_PRIVATE_KEY: base64 of its 32 raw bytes
                self.env["TELNYX_PRIVATE_KEY"] = base64.b64encode(
                    simulator_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()
            else:  # a PEM file named on the command line
                pem = tmp_path / "telnyx-key.pem"
                pem.write_bytes(simulator_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
                self.args = ["--telnyx-private-key", str(pem)]


def write_caller(path, seconds: float = 2.0) -> None:
    """Silence, then a tone over the agent's greeting (a barge-in), then silence."""
    t = np.arange(int(RATE * seconds)) / RATE
    voice = np.where((t >= TONE_AT_S) & (t < TONE_AT_S + TONE_S), 7000 * np.sin(2 * np.pi * TONE_HZ * t), 0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(voice.astype("<i2").tobytes())


def dominant_hz(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    if len(x) < 256 or np.sqrt(np.mean(x ** 2)) < 200:
        return 0.0  # silence has no pitch
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[int(np.argmax(spectrum))])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def app_settings(server, credentials: Credentials) -> Settings:
    # Every carrier's validation on (the default); Twilio's needs its token set to start at all.
    base = {"realtime_url": server.url, "realtime_api_key": "sk-test", "audio_codec": "g711_ulaw",
            "twilio_auth_token": "not-this-carrier"}
    return Settings(**{**base, **credentials.settings})


async def simulate(host: str, carrier: str, credentials: Credentials, played, record) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telephony", "simulate", "--carrier", carrier, "--url", f"ws://{host}/anything",
        "--play", str(played), "--record", str(record), "--listen", "5", "--hang-up-after", "0.5",
        *credentials.args, cwd=ROOT, env=clean_env(**credentials.env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, stdout.decode(), stderr.decode()


@pytest.mark.parametrize("carrier", CARRIER_NAMES)
async def test_simulate_speaks_each_carrier_to_a_running_service(tmp_path, carrier):
    """Signed webhook accepted, the stream its markup names opened, the greeting (440 Hz) heard
    and cut when the caller talks over it, the answer (660 Hz) heard after the caller's turn."""
    played, record = tmp_path / "caller.wav", tmp_path / "call.wav"
    write_caller(played)
    credentials = Credentials(carrier, tmp_path)
    script = Script(response_ms=2500, speed=1.5)
    async with ScriptedRealtimeServer(script) as server, running_app(app_settings(server, credentials)) as (_, host):
        code, out, err = await simulate(host, carrier, credentials, played, record)
    assert code == 0, err + out
    path = CARRIERS[carrier].voice_path
    assert f"{carrier}: webhook POST http://{host}{path} signed for" in out, out
    assert f"{carrier} answer: stream ws://{host}{CARRIERS[carrier].media_path}/" in out, out
    assert "BARGE-IN" in out
    assert len(server.connections) == 1

    caller, agent, rate = read_call(record)
    assert rate == RATE
    onset = int(TONE_AT_S * RATE)
    assert abs(dominant_hz(caller[onset:onset + 4000]) - TONE_HZ) < 10  # the caller's tone, on the call's clock
    greeting = agent[int(0.1 * RATE):int(0.9 * RATE)]
    assert abs(dominant_hz(greeting) - 440) < 10, dominant_hz(greeting)  # the greeting, heard at once
    # Cut off by the caller: quiet from 300 ms after the tone began until the answer can come
    # (the tone lasts 0.6 s and the model waits 300 ms of silence).
    assert rms(agent[onset + int(0.3 * RATE):onset + int(0.8 * RATE)]) < 100
    after = agent[onset + int((TONE_S + 0.3) * RATE):]
    loud = np.flatnonzero(np.abs(after) > 2000)
    assert len(loud) > RATE, "the agent did not answer after the caller's turn"
    answer = after[loud[0]:loud[0] + RATE]
    assert abs(dominant_hz(answer) - 660) < 10, dominant_hz(answer)  # the second response, whole seconds of it


@pytest.mark.parametrize("carrier", CARRIER_NAMES)
async def test_simulate_with_the_wrong_credential_is_refused(tmp_path, carrier):
    played, record = tmp_path / "caller.wav", tmp_path / "call.wav"
    write_caller(played, 1.0)
    credentials = Credentials(carrier, tmp_path, wrong=True)
    async with ScriptedRealtimeServer(Script()) as server, running_app(app_settings(server, credentials)) as (_, host):
        code, out, err = await simulate(host, carrier, credentials, played, record)
    assert code == 1, out
    assert "refused the call: HTTP 403" in err, err
    assert "signed for" in out  # it did sign (with the wrong credential), not post unsigned
    if carrier != "twilio":  # the carrier routes say why (Twilio's says only "Forbidden")
        assert "signature does not match" in err, err
    assert not server.connections and not record.exists()  # no stream was opened


@pytest.mark.parametrize("carrier", CARRIER_NAMES)
def test_demo_runs_a_whole_call_over_each_carrier(tmp_path, carrier):
    played, out = tmp_path / "caller.wav", tmp_path / "demo.wav"
    write_caller(played)
    proc = subprocess.run([sys.executable, "-m", "telephony", "demo", "--carrier", carrier, "--voice", "synth",
                           "--play", str(played), "--output", str(out)],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"a simulated {carrier} phone call" in proc.stdout
    assert "signed webhook to http://127.0.0.1:" in proc.stdout and CARRIERS[carrier].voice_path in proc.stdout
    caller, agent, rate = read_call(out)
    onset = int(TONE_AT_S * RATE)
    assert rms(agent[:onset]) > 500  # the greeting, heard before the caller spoke
    assert rms(agent[onset + int(0.3 * RATE):onset + int(0.6 * RATE)]) < 100  # cut off by the caller
    assert rms(agent[onset + int(TONE_S * RATE):]) > 300  # and an answer after the caller's turn


def test_plivo_signature_is_the_one_plivos_own_sdk_checks():
    """The caller's V3 signature, written from the description, against plivo-python's validator."""
    from plivo.utils import validate_v3_signature

    token = "plivo-token"
    fields = {"CallUUID": "u-1", "From": "15550100001", "To": "15550100002", "Direction": "inbound"}
    for url in ("https://bridge.example.com/plivo/voice", "https://bridge.example.com/plivo/voice?b=2&a=1"):
        for method in ("POST", "GET"):
            headers = plivo_caller.signer(token)(method, url, fields, b"")
            nonce, signature = headers["X-Plivo-Signature-V3-Nonce"], headers["X-Plivo-Signature-V3"]
            assert validate_v3_signature(method, url, nonce, token, signature, dict(fields)), (method, url)
            assert not validate_v3_signature(method, url, nonce, "another", signature, dict(fields))


def test_markup_a_carrier_could_not_play_is_refused():
    texml = ('<Response><Connect><Stream url="wss://h/telnyx/media-stream" bidirectionalMode="rtp" '
             'bidirectionalCodec="PCMU"><Parameter name="a" value="1"/></Stream></Connect></Response>')
    assert telnyx_caller.parse_texml(texml).parameters == {"a": "1"}
    with pytest.raises(DialError, match="mp3"):  # Telnyx's default mode expects MP3 back
        telnyx_caller.parse_texml(texml.replace(' bidirectionalMode="rtp"', ""))
    xml = ('<Response><Stream bidirectional="true" keepCallAlive="true" contentType="audio/x-mulaw;rate=8000" '
           'extraHeaders="a=1,b=2">wss://h/plivo/media-stream/x</Stream></Response>')
    answer = plivo_caller.parse_xml(xml)
    assert answer.url == "wss://h/plivo/media-stream/x" and answer.parameters == {"a": "1", "b": "2"}
    for bad in (' keepCallAlive="true"', ' contentType="audio/x-mulaw;rate=8000"', ' bidirectional="true"'):
        with pytest.raises(DialError, match="keepCallAlive"):
            plivo_caller.parse_xml(xml.replace(bad, ""))
