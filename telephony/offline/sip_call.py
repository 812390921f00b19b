"""``telephony simulate --sip``: a SIP call through OpenAI's SIP route, offline.

The peer plays OpenAI: it listens where the service's ``OPENAI_BASE_URL`` points, rings the
service's ``/openai/sip`` with a webhook signed by ``OPENAI_WEBHOOK_SECRET``, answers with the
local engine once the service accepts, plays the caller's WAV in, and records what the caller said
and heard to a stereo WAV. ``--engine realtime`` (``openai_sip_peer``) is a Realtime call
(``realtime.call.incoming``, ``/v1/realtime/calls``); ``--engine live`` (``local_live_sip``) a
GPT-Live one (``live.transport.incoming``, ``/v1/live/sessions``, the ``/attach`` sideband).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

import httpx

from telephony.offline.local_engine import EngineConfig, SpeakingPersona
from telephony.offline.local_live_sip import LocalLiveSipPeer
from telephony.offline.openai_sip_peer import OpenAISipPeer
from telephony.offline.voices import make_voice
from telephony.offline.wavfile import read_pcm8k, write_call
from telephony.settings import Settings

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

LOCAL_KEY = "sk-local-sip"  # the key the peer expects when the environment names none
UTTERANCE_GAP_MS = 300  # Live transcripts come in fragments: closer than this, one utterance


def simulate_sip(url: str, play: str | None, record: str, *, listen_s: float = 8.0, host: str = "127.0.0.1",
                 port: int = 8766, caller: str = "+15550100001", callee: str = "+15550100002",
                 voice: str = "auto", engine: str = "realtime", dtmf: tuple[tuple[float, str], ...] = ()) -> int:
    """``engine``: which of OpenAI's SIP engines rings the service: ``realtime``
    (``realtime.call.incoming``) or ``live`` (``live.transport.incoming``, GPT-Live).
    ``dtmf``: (seconds from the answer, key) the caller presses."""
    settings = Settings.from_env()
    if not settings.openai_webhook_secret:
        print("telephony simulate --sip: set OPENAI_WEBHOOK_SECRET (the same as the service's)", file=sys.stderr)
        return 2
    audio = b""
    if play:
        audio = audioop.lin2ulaw(read_pcm8k(play).astype("<i2").tobytes(), 2)
    headers = [{"name": "From", "value": f"<sip:{caller}@pstn.example.com>;tag=sim"},
               {"name": "To", "value": f"<sip:{callee}@sip.api.openai.com>"}]
    peer_options = dict(api_key=settings.openai_key() or LOCAL_KEY, secret=settings.openai_webhook_secret,
                        caller_audio=audio, dtmf=dtmf, listen_s=listen_s, host=host, port=port)
    timeout_s = len(audio) / 8000 + listen_s + 30
    run = _run_live if engine == "live" else _run_realtime

    try:
        return asyncio.run(run(url, headers, SpeakingPersona(make_voice(voice)), peer_options, timeout_s, record))
    except (OSError, ValueError, TimeoutError, httpx.HTTPError) as exc:  # e.g. the service is not running
        print(f"telephony simulate --sip: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _announce(base_url: str) -> None:
    print(f"OpenAI's side of the SIP route on {base_url} (the service needs OPENAI_BASE_URL={base_url})", flush=True)


async def _run_realtime(url: str, headers: list[dict[str, str]], persona: SpeakingPersona, peer_options: dict,
                        timeout_s: float, record: str) -> int:
    async with OpenAISipPeer(persona, EngineConfig(), **peer_options) as peer:
        _announce(peer.base_url)
        call = await peer.ring(url, headers)
        print(f"webhook realtime.call.incoming {call.call_id}: HTTP {call.webhook_status}", flush=True)
        await asyncio.wait_for(call.ended.wait(), timeout_s)
    if call.accepted is None:
        return _not_accepted(call.rejected)
    session = call.accepted
    print(f"accepted: model {session.get('model')}, voice {session.get('audio', {}).get('output', {}).get('voice')}, "
          f"tools {[t.get('name') for t in session.get('tools', [])]}")
    print(f"sideband: {dict(Counter(e.get('type') for e in call.received))}")
    for event in call.sent:
        if event.get("type") == "response.output_audio_transcript.done":
            print(f"  agent: {event.get('transcript')}")
    return _finish(call.referred_to, call.end_reason, record, call.caller, call.agent)


async def _run_live(url: str, headers: list[dict[str, str]], persona: SpeakingPersona, peer_options: dict,
                    timeout_s: float, record: str) -> int:
    async with LocalLiveSipPeer(persona, EngineConfig(), **peer_options) as peer:
        _announce(peer.base_url)
        s = await peer.ring(url, headers)
        print(f"webhook live.transport.incoming {s.session_id}: HTTP {s.webhook_statuses[-1]}", flush=True)
        await asyncio.wait_for(s.ended.wait(), timeout_s)
    if s.accepted is None:
        return _not_accepted(s.rejected)
    session = s.accepted
    tools = ((session.get("delegation") or {}).get("responses") or {}).get("tools") or []
    print(f"accepted (Live): model {session.get('model')}, voice "
          f"{(session.get('audio') or {}).get('output', {}).get('voice')}, tools {[t.get('name') for t in tools]}")
    print(f"REST: {dict(Counter(verb for verb, _ in peer.requests))}")
    print(f"sideband: {dict(Counter(e.get('type') for e in s.received))}")
    said = [(e["start_ms"], who, e) for kind, who in (("session.output_transcript.delta", "agent"),
                                                     ("session.input_transcript.delta", "caller"))
            for e in s.sent if e.get("type") == kind]
    for start_ms, who, text in _utterances(sorted(said, key=lambda x: x[0])):
        print(f"  {start_ms / 1000:6.2f} s {who}: {text}")
    _finish(s.referred_to, f"session.closed {s.end_reason}", record, s.caller, s.agent)
    if s.invalid:  # the service sent what OpenAI would refuse: the simulation says so, and fails
        print(f"messages the openai package's Live models refuse: {s.invalid}", file=sys.stderr)
        return 1
    return 0


def _utterances(deltas: list[tuple[int, str, dict]]) -> list[tuple[int, str, str]]:
    """Transcript deltas on the session clock → (start ms, speaker, words) per utterance: a
    speaker's deltas that follow on within ``UTTERANCE_GAP_MS`` are one utterance."""
    out: list[list] = []  # [start_ms, who, text, end_ms]
    for start_ms, who, e in deltas:
        same = next((u for u in reversed(out) if u[1] == who), None)
        if same is not None and start_ms <= same[3] + UTTERANCE_GAP_MS:
            same[2] += e["delta"]
            same[3] = max(same[3], e["end_ms"])
        else:
            out.append([start_ms, who, e["delta"], e["end_ms"]])
    return [(u[0], u[1], u[2].strip()) for u in out]


def _not_accepted(rejected: int | None) -> int:
    why = f"rejected with SIP {rejected}" if rejected else "never accepted"
    print(f"telephony simulate --sip: the call was {why}", file=sys.stderr)
    return 1


def _finish(referred_to: list[str], end_reason: str, record: str, caller: bytearray, agent: bytearray) -> int:
    if referred_to:
        print(f"referred to {', '.join(referred_to)}")
    print(f"ended: {end_reason}")
    write_call(record, bytes(caller), bytes(agent))
    print(f"recorded {record} (stereo: caller left, agent right, 8 kHz 16-bit)")
    return 0
