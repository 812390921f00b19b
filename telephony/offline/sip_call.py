"""``telephony simulate --sip``: a SIP call through OpenAI's SIP route, offline.

The peer (``openai_sip_peer``) plays OpenAI: it listens where the service's ``OPENAI_BASE_URL``
points, rings the service's ``/openai/sip`` with a webhook signed by ``OPENAI_WEBHOOK_SECRET``,
answers with the local engine once the service accepts, plays the caller's WAV in, and records
what the caller said and heard to a stereo WAV.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from telephony.offline.local_engine import EngineConfig, SpeakingPersona
from telephony.offline.openai_sip_peer import OpenAISipPeer
from telephony.offline.voices import make_voice
from telephony.offline.wavfile import read_pcm8k, write_call
from telephony.settings import Settings

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

LOCAL_KEY = "sk-local-sip"  # the key the peer expects when the environment names none


def simulate_sip(url: str, play: str | None, record: str, *, listen_s: float = 8.0, host: str = "127.0.0.1",
                 port: int = 8766, caller: str = "+15550100001", callee: str = "+15550100002",
                 voice: str = "auto") -> int:
    settings = Settings.from_env()
    if not settings.openai_webhook_secret:
        print("telephony simulate --sip: set OPENAI_WEBHOOK_SECRET (the same as the service's)", file=sys.stderr)
        return 2
    audio = b""
    if play:
        audio = audioop.lin2ulaw(read_pcm8k(play).astype("<i2").tobytes(), 2)
    headers = [{"name": "From", "value": f"<sip:{caller}@pstn.example.com>;tag=sim"},
               {"name": "To", "value": f"<sip:{callee}@sip.api.openai.com>"}]

    async def run() -> int:
        persona = SpeakingPersona(make_voice(voice))
        async with OpenAISipPeer(persona, EngineConfig(), api_key=settings.openai_key() or LOCAL_KEY,
                                 secret=settings.openai_webhook_secret, caller_audio=audio,
                                 listen_s=listen_s, host=host, port=port) as peer:
            print(f"OpenAI's side of the SIP route on {peer.base_url} "
                  f"(the service needs OPENAI_BASE_URL={peer.base_url})", flush=True)
            call = await peer.ring(url, headers)
            print(f"webhook realtime.call.incoming {call.call_id}: HTTP {call.webhook_status}", flush=True)
            await asyncio.wait_for(call.ended.wait(), len(audio) / 8000 + listen_s + 30)
        if call.accepted is None:
            why = f"rejected with SIP {call.rejected}" if call.rejected else "never accepted"
            print(f"telephony simulate --sip: the call was {why}", file=sys.stderr)
            return 1
        session = call.accepted
        print(f"accepted: model {session.get('model')}, voice {session.get('audio', {}).get('output', {}).get('voice')}, "
              f"tools {[t.get('name') for t in session.get('tools', [])]}")
        print(f"sideband: {dict(Counter(e.get('type') for e in call.received))}")
        for event in call.sent:
            if event.get("type") == "response.output_audio_transcript.done":
                print(f"  agent: {event.get('transcript')}")
        if call.referred_to:
            print(f"referred to {', '.join(call.referred_to)}")
        print(f"ended: {call.end_reason}")
        write_call(record, bytes(call.caller), bytes(call.agent))
        print(f"recorded {record} (stereo: caller left, agent right, 8 kHz 16-bit)")
        return 0

    try:
        return asyncio.run(run())
    except (OSError, ValueError, TimeoutError) as exc:
        print(f"telephony simulate --sip: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
