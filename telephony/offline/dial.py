"""Placing a simulated call the way a carrier does: post its signed webhook, then stream.

``telephony simulate`` and ``telephony demo`` both go through here: POST the incoming call to
the carrier's voice webhook (``/twilio/voice``, ``/telnyx/voice``, ``/plivo/voice``,
``/signalwire/voice``), read the stream URL and its parameters from the markup it answers with,
and run that carrier's ``CallSimulator`` against the stream (``telephony/offline/callers``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Callable, Mapping

from telephony.offline.callers import Carrier, DialError, Signer, StreamInstructions, carrier
from telephony.offline.callers.base import http_base, post_webhook
from telephony.offline.callers.twilio import parse_twiml
from telephony.offline.simulator import CallResult, CallSimulator
from telephony.serve.stream_paths import redact_segments

try:
    import audioop
except ImportError:  # pragma: no cover - Python 3.13 without audioop-lts
    raise ImportError("audioop is missing: install audioop-lts on Python 3.13+") from None

__all__ = ["DialError", "StreamInstructions", "parse_twiml", "place_call", "simulate", "webhook_url"]


def webhook_url(stream_url: str, carrier_name: str = "twilio") -> str:
    """ws://host:port/anything → http://host:port/<carrier>/voice (wss → https)."""
    return http_base(stream_url) + carrier(carrier_name).voice_path


def signer_from_env(chosen: Carrier, options: Mapping[str, Any] | None = None) -> Signer | None:
    """The carrier's credential as the service reads it (TWILIO_AUTH_TOKEN, PLIVO_AUTH_TOKEN,
    SIGNALWIRE_SIGNING_KEY; Telnyx: the private key the simulator is given)."""
    return chosen.signer_from_env(os.environ, options or {})


async def place_call(url: str, caller_audio: bytes, *, carrier_name: str = "twilio", signer: Signer | None = None,
                     public_url: str | None = None, caller: str = "+15550100001",
                     callee: str = "+15550100002", tail_s: float = 8.0, hang_up_when_quiet_s: float | None = 1.5,
                     on_dialled: Callable[[StreamInstructions, CallSimulator], None] | None = None
                     ) -> tuple[StreamInstructions, CallResult]:
    """Posts the carrier's webhook to ``url``'s host (signed with ``signer``, over ``public_url``
    when the service is published there), then streams ``caller_audio`` (μ-law 8 kHz) and listens
    for up to ``tail_s`` more seconds (less once the agent has answered and gone quiet)."""
    chosen = carrier(carrier_name)
    call_id = chosen.simulator.new_call_id()
    fields = chosen.webhook_fields(call_id, caller, callee)
    answer = await asyncio.to_thread(post_webhook, chosen, http_base(url), fields, signer, public_url)
    sim = chosen.simulator(answer.url, caller_audio=caller_audio, call_sid=call_id,
                           custom_parameters=answer.parameters, duration_s=len(caller_audio) / 8000 + tail_s,
                           hang_up_when_quiet_s=hang_up_when_quiet_s, from_number=caller, to_number=callee)
    if on_dialled is not None:
        on_dialled(answer, sim)
    return answer, await sim.run()


def simulate(url: str, play: str | None, record: str, *, listen_s: float = 8.0,
             hang_up_after_s: float | None = 1.5, caller: str = "+15550100001",
             callee: str = "+15550100002", carrier_name: str = "twilio",
             options: Mapping[str, Any] | None = None) -> int:
    """``telephony simulate``: one call with a live timeline; writes the stereo recording."""
    from telephony.offline.call_analysis import CALLER_GAP_S, measure, spans
    from telephony.offline.call_console import CallConsole
    from telephony.offline.wavfile import read_call, read_pcm8k, write_call

    async def run() -> None:
        chosen = carrier(carrier_name)
        signer = signer_from_env(chosen, options)
        public = getattr(signer, "public_b64", None)  # Telnyx: which public key the service must hold
        print(f"{chosen.name}: webhook POST {webhook_url(url, chosen.name)} "
              + ("unsigned (no credential here; the service must run without validation)" if signer is None
                 else f"signed for {chosen.credential}" + (f" = {public}" if public else "")))
        pcm = read_pcm8k(play) if play else None
        audio = audioop.lin2ulaw(pcm.astype("<i2").tobytes(), 2) if pcm is not None else b""
        turns = spans(pcm, 8000, CALLER_GAP_S) if pcm is not None else []
        console = CallConsole()

        def dialled(answer: StreamInstructions, sim: CallSimulator) -> None:
            # The stream's MAC and token are credentials for this call: masked, as the service's logs do.
            shown = {k: ("[redacted]" if k == "token" else v) for k, v in answer.parameters.items()}
            print(f"{chosen.name} answer: stream {redact_segments(answer.url)} parameters {shown}")
            console.attach(sim, turns)

        try:
            _, result = await place_call(url, audio, carrier_name=chosen.name, signer=signer,
                                         public_url=os.environ.get("PUBLIC_URL", "").strip() or None,
                                         caller=caller, callee=callee, tail_s=listen_s,
                                         hang_up_when_quiet_s=hang_up_after_s, on_dialled=dialled)
        finally:
            await console.close()
        write_call(record, result.caller, result.agent)
        print(f"\nrecorded {record} (stereo: caller left, agent right, 8 kHz 16-bit)")
        console.summary(measure(*read_call(record)), clears=result.clears)

    try:
        asyncio.run(run())
    except (DialError, OSError, EOFError, ValueError, RuntimeError) as exc:
        print(f"telephony simulate: {exc}", file=sys.stderr)
        return 1
    return 0

