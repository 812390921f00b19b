"""``telephony demo``: a whole call, offline, in one process, in about fifteen seconds.

The app runs under uvicorn on a free loopback port with the local Realtime engine; a simulated
caller (Twilio's, or ``--carrier``'s: Telnyx, Plivo, SignalWire) posts the carrier's webhook,
signed with a credential made up for the run, opens the stream its answer names, plays the
bundled recording (it talks over the greeting, then waits for the answer), and records both
sides. The latency figures come from that recording.

``--scenario backchannel``: the caller only says "mm-hmm" over the greeting, as a listener
does, and the report says whether the greeting was still heard whole (a bridge that takes any
sound for an interruption cuts it off; one that tells backchannels apart resumes it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, TextIO

import numpy as np
import uvicorn

from telephony.core.profile import load_profile
from telephony.offline.call_analysis import (
    CALLER_GAP_S,
    CallMeasurements,
    measure,
    spans,
)
from telephony.offline.call_console import CallConsole
from telephony.offline.callers import DialError, carrier
from telephony.offline.demo_tools import LOOKUP_ORDER
from telephony.offline.dial import place_call
from telephony.offline.heard import Heard, compare
from telephony.offline.local_engine import EngineConfig, RealtimeEngine, SpeakingPersona, ToolCue
from telephony.offline.local_realtime import local_connector
from telephony.offline.voices import Voice, make_voice
from telephony.offline.wavfile import read_call, read_pcm8k, write_call
from telephony.serve.app import create_app
from telephony.serve.direct_lane import DirectWebSocketProtocol
from telephony.serve.server import tcp_socket
from telephony.settings import Settings

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

LOOPBACK = "127.0.0.1"


def demo_caller_wav() -> Path:
    return Path(str(resources.files("telephony.offline.assets").joinpath("demo-caller.wav")))


@dataclass
class DemoReport:
    output: Path
    seconds: float
    measurements: CallMeasurements
    heard_ms: list[int]
    voice: str
    scenario: str = "call"
    greeting: Heard | None = None  # how much of the greeting the caller heard (μ-law scenarios)


SCENARIOS = ("call", "backchannel")
BACKCHANNEL_AT_S = 1.2  # into the greeting: well inside its first sentence
BACKCHANNEL = "mm-hmm"


def backchannel_caller(voice: str = "en-gb") -> np.ndarray:
    """Silence, then "mm-hmm" over the greeting, then silence: a caller who is only listening.
    In espeak-ng's British voice: the offline recogniser hears its US "mm-hmm" as "i am", which
    a word rule would rightly take for an interruption."""
    from telephony.offline.barge_in_corpus import speak

    said = speak(BACKCHANNEL, voice)
    return np.concatenate([np.zeros(int(BACKCHANNEL_AT_S * 8000)), said]).astype(np.int16)


class UtteranceTap:
    """Keeps each assistant item's audio as the engine sent it, for comparing with what was heard."""

    def __init__(self) -> None:
        self.items: dict[str, bytearray] = {}

    def observe(self, direction: str, event: dict[str, Any]) -> None:
        if direction == "server" and event.get("type") in ("response.audio.delta", "response.output_audio.delta"):
            self.items.setdefault(event["item_id"], bytearray()).extend(base64.b64decode(event["delta"]))

    def first(self) -> bytes:
        return bytes(next(iter(self.items.values()), b""))


def render_ulaw(voice: Voice, text: str) -> bytes:
    """The whole of ``text`` as the local engine sends it in a μ-law session. A call's tap holds
    only what was generated before a cancel; this is all of it, byte for byte the same."""
    engine = RealtimeEngine(SpeakingPersona(voice), EngineConfig())
    engine.open(0.0)
    engine.receive(json.dumps({"type": "session.update", "session": {"output_audio_format": "g711_ulaw"}}), 0.0)
    engine.receive(json.dumps({"type": "response.create",
                               "response": {"instructions": f"Say it by saying exactly this: {text}"}}), 0.0)
    return b"".join(base64.b64decode(e["delta"]) for e in engine.advance(math.inf)
                    if e["type"] == "response.audio.delta")


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[int]:
    """The app under uvicorn on a free loopback port, in this event loop."""
    sock = tcp_socket(LOOPBACK, 0)  # TCP protocol: asyncio turns Nagle off, so `clear` is not held
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off", ws=DirectWebSocketProtocol))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def run_demo(output: Path, caller_wav: Path | None = None, out: TextIO | None = None,
                   progress: bool | None = None, voice: Voice | None = None, tool: bool = False,
                   dialect: str = "beta", scenario: str = "call", carrier_name: str = "twilio") -> DemoReport:
    """``tool``: the agent answers the caller's first turn by calling a Python tool (lookup_order).
    ``scenario``: "call" (the bundled caller, or ``caller_wav``) or "backchannel" (see the module).
    ``carrier_name``: whose webhook and media stream the call goes over; its credentials are made
    up for the run, so the webhook is signed and checked as on a real line."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown demo scenario {scenario!r}: expected one of {', '.join(SCENARIOS)}")
    if scenario == "backchannel" and (caller_wav is not None or dialect == "live"):
        raise ValueError("the backchannel scenario plays its own caller, over the beta or GA dialect")
    out = out or sys.stdout
    started = time.monotonic()
    caller_pcm = backchannel_caller() if scenario == "backchannel" else read_pcm8k(caller_wav or demo_caller_wav())
    caller_audio = audioop.lin2ulaw(caller_pcm.astype("<i2").tobytes(), 2)
    # Loopback only, no carrier account: the carrier's credential is generated for this run, the
    # service checks the webhook with it and the simulated caller signs with it.
    # The backchannel scenario has the model speak μ-law, which the bridge forwards byte for byte,
    # so what the caller heard can be matched exactly against the greeting the engine sent.
    codec = {"audio_codec": "g711_ulaw"} if scenario == "backchannel" else {}
    chosen = carrier(carrier_name)
    credentials, simulator_env = chosen.generated()
    signer = chosen.signer_from_env(simulator_env, {})
    settings = Settings(**{"realtime_url": "local", "host": LOOPBACK, "realtime_dialect": dialect,
                           "twilio_validate_signatures": False, **codec, **credentials})
    profile = load_profile(settings.profile_path())
    cue = None
    if tool:
        profile = replace(profile, function_tools=(LOOKUP_ORDER,))
        cue = ToolCue(1, LOOKUP_ORDER.name, '{"order": "A-17"}')  # response 1 answers the first turn
    voice = voice or make_voice()
    console = CallConsole(out, progress)
    heard: list[int] = []
    tap = UtteranceTap()

    def observe(direction: str, event: dict[str, Any]) -> None:
        tap.observe(direction, event)
        if direction == "client" and event.get("type") == "conversation.item.truncate":
            heard.append(int(event.get("audio_end_ms", 0)))
        if direction == "client" and (event.get("item") or {}).get("type") == "function_call_output":
            console.line("bridge", f"tool output to the model: {event['item']['output']}")
        console.engine_event(direction, event)

    print(f"telephony demo: a simulated {chosen.name} phone call to the bridge, with the local Realtime engine "
          f"(agent voice: {voice.name}, {dialect} dialect).", file=out)
    app = create_app(settings, profile, lambda s: local_connector(voice, observer=observe,
                                                                  greeting=profile.greeting, tool_cue=cue,
                                                                  dialect=s.realtime_dialect))
    turns = spans(caller_pcm, 8000, CALLER_GAP_S)
    async with serving(app) as port:
        url = f"ws://{LOOPBACK}:{port}{chosen.media_path}"
        print(f"Calling {url} (signed webhook to http://{LOOPBACK}:{port}{chosen.voice_path})\n", file=out)
        try:
            _, result = await place_call(url, caller_audio, carrier_name=chosen.name, signer=signer, tail_s=8.0,
                                         hang_up_when_quiet_s=1.0,
                                         on_dialled=lambda answer, sim: console.attach(sim, turns))
        finally:
            await console.close()
    write_call(output, result.caller, result.agent)
    caller, agent, rate = read_call(output)
    m = measure(caller, agent, rate)
    seconds = time.monotonic() - started
    print(f"\nCall over; both sides recorded to {output} (stereo, caller left, agent right, 8 kHz, "
          f"{len(caller) / rate:.1f} s). Demo took {seconds:.1f} s.", file=out)
    console.summary(m, heard, result.clears)
    greeting = None
    if scenario == "backchannel":
        whole = render_ulaw(voice, profile.greeting)
        if not whole.startswith(tap.first()):
            raise RuntimeError("the greeting the engine sent is not the one rendered for comparison")
        greeting = compare(whole, result.played)
        print_greeting(greeting, out)
    return DemoReport(output, seconds, m, heard, voice.name, scenario, greeting)


def print_greeting(greeting: Heard, out: TextIO) -> None:
    verdict = "yes: the greeting was heard whole" if greeting.whole else "no: the greeting was cut"
    print(f'\nThe caller said "{BACKCHANNEL}" {BACKCHANNEL_AT_S:.1f} s into the greeting. Heard whole? {verdict} '
          f"({greeting.heard_ms:.0f} of {greeting.utterance_ms:.0f} ms heard, {greeting.skipped_ms:.0f} ms never, "
          f"{greeting.repeated_ms:.0f} ms twice).", file=out)


def main(output: str = "demo-call.wav", caller_wav: str | None = None, verbose: bool = False,
         voice: str = "auto", tool: bool = False, dialect: str = "beta", scenario: str = "call",
         carrier_name: str = "twilio") -> int:
    # The engine answers the bridge's own response.cancel after a VAD interrupt with an error,
    # as the real service does; the bridge logs it. Not news in a demo: quiet unless asked.
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = asyncio.run(run_demo(Path(output), Path(caller_wav) if caller_wav else None,
                                      voice=make_voice(voice), tool=tool, dialect=dialect, scenario=scenario,
                                      carrier_name=carrier_name))
    except (ValueError, DialError) as exc:
        print(f"telephony demo: {exc}", file=sys.stderr)
        return 2
    if scenario == "backchannel":
        return 0  # whole or cut, the report says which: both are what some bridge does
    if caller_wav is None and not (report.measurements.barge_in_stops and report.measurements.response_latencies):
        print("telephony demo: the bundled call did not show a barge-in and an answer", file=sys.stderr)
        return 1
    return 0
