"""Calls survive a deploy: on shutdown, a call still going is moved to a fresh stream.

The old instance saves the call (conversation so far, transcript, per-call settings) in the shared
state under its call sid, with a TTL, then updates the live Twilio call with new TwiML: a
``<Connect><Stream>`` to PUBLIC_URL with a signed token, as for any stream, and ``resume``. Twilio
stops the old stream and opens the new one, on whichever instance its router picks; there the
bridge fetches the saved call while the Realtime handshake runs, and the new session gets the
conversation instead of a greeting, as after a Realtime reconnect. The caller hears a short pause.

Other carriers whose REST API can point a live call at new markup (``MovableCall``) are moved the
same way: SignalWire (LaML update) and Plivo (A-leg transfer) by URL, the call sent to that
carrier's answer route with its sid and ``resume`` signed in the query (as an outbound call's answer
URL is), which the carrier fetches signed like any webhook; Vonage by a transfer to an inline NCCO
that connects the call to a new stream, as Twilio's inline TwiML. Telnyx is drained, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping

from telephony.core.call import Call
from telephony.ops.metrics import Metrics
from telephony.serve.bridge import Bridge
from telephony.serve.carriers import CarrierError
from telephony.serve.security import AGENT_STREAM, StreamTokens
from telephony.serve.shared_state import LocalState, RedisState
from telephony.serve.stream_paths import signed_stream_url
from telephony.serve.transcripts import TranscriptHub
from telephony.serve.twilio_rest import CallControl, TwilioError
from telephony.wire.twiml import connect_stream

log = logging.getLogger("telephony.handoff")

RESUME = "resume"  # the stream parameter that says "this call was handed over"
# Twilio's REST answer must come within the drain's handoff budget (limits.HANDOFF_BUDGET_S, 3 s),
# with time left to act on it; its client's own timeout (10 s) would outlast the budget.
REDIRECT_DEADLINE_S = 2.5
# Inline in the redirect's TwiML: what picks the profile and lists the call; the rest (instructions,
# greeting, metadata, …) is in the saved snapshot. Twilio refuses TwiML over 4,000 characters
# (error 32018), which a long outbound call's parameters inlined used to pass.
INLINE_PARAMETERS = ("profile", "from", "to", "direction")


def handoff_key(call_sid: str) -> str:
    return f"handoff:{call_sid}"


class Handoff:
    def __init__(self, state: LocalState | RedisState, control: Callable[[], CallControl | None], stream_url: str,
                 tokens: StreamTokens, transcripts: TranscriptHub, metrics: Metrics, fallback: str,
                 ttl_s: float, resume_targets: Mapping[str, Callable[[dict[str, str], str, float], Any]] = {}
                 ) -> None:
        self.state = state
        # Per carrier that can move a live call (MovableCall): what its move takes for a call's
        # parameters and its id there (a signed answer URL, or Vonage's NCCO).
        self.resume_targets = resume_targets
        self.control = control
        self.stream_url = stream_url
        self.tokens = tokens
        self.transcripts = transcripts
        self.metrics = metrics
        self.fallback = fallback
        self.ttl_s = ttl_s

    async def hand_over(self, bridge: Bridge) -> bool:
        """Moves the call to a new stream; False when it cannot (it is then ended as in a drain)."""
        if not isinstance(bridge, Bridge):  # a call without a Twilio stream (OpenAI's SIP route)
            return False
        call, sid, carrier = bridge.call, bridge.call.call_sid, bridge.wire.carrier
        if not sid or call.ended:
            return False
        if carrier == "twilio":
            if (control := self.control()) is None:
                return False
            twiml = self.redirect_twiml(call, time.time())

            def move():
                return control.redirect(sid, twiml)
        else:  # where the carrier can move it (else drained)
            mover, resume_target = bridge.call_control, self.resume_targets.get(carrier)
            if resume_target is None or not hasattr(mover, "move"):
                return False
            call_id = bridge.carrier_call_id or sid
            target = resume_target(self.resume_parameters(call), call_id, time.time())

            def move():
                return mover.move(call_id, target)
        saved = {**call.snapshot(), "transcript": self.transcripts.turns(sid)}
        if not await self.state.put(handoff_key(sid), saved, self.ttl_s):
            return self._failed(sid, "its state could not be saved")
        # Twilio may stop this stream before its REST answer arrives: the stream's cleanup waits for
        # the outcome (Bridge.handoff_settled) instead of guessing it.
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        bridge.handoff_outcome = outcome
        bridge.dispatch(call.on_handing_over())
        moved = False
        try:
            # The new stream (same call sid) usually opens before this one ends: let it claim the call.
            await bridge.release_stream()
            await asyncio.wait_for(move(), REDIRECT_DEADLINE_S)
            moved = True
        except (TwilioError, CarrierError) as exc:  # refused (the caller hung up meanwhile, say): state not needed
            await self.state.take(handoff_key(sid))
            return self._failed(sid, f"{bridge.wire.label} refused the update ({exc.status}): {exc}")
        except asyncio.TimeoutError:  # unknown whether the carrier acted: the saved state lapses with its TTL
            return self._failed(sid, f"{bridge.wire.label} did not answer within {REDIRECT_DEADLINE_S:g} s")
        finally:  # the record first, then the stream's cleanup may go on (it waits for the outcome)
            bridge.dispatch(call.on_handoff_result(moved, len(saved["conversation"])))
            if not outcome.done():
                outcome.set_result(moved)
        log.info("call %s: handed over to a new stream (%d conversation items)", sid, len(saved["conversation"]))
        self.metrics.handoffs.labels("handed_over").inc()
        return True

    @staticmethod
    def resume_parameters(call: Call) -> dict[str, str]:
        """What the new stream carries: small, whatever the call's parameters (the rest is saved)."""
        return {"call_sid": call.call_sid, RESUME: "1",
                **{k: call.parameters[k] for k in INLINE_PARAMETERS if call.parameters.get(k)}}

    def redirect_twiml(self, call: Call, now: float) -> str:
        """The <Connect><Stream> that carries a Twilio call on."""
        url = signed_stream_url(self.stream_url, self.tokens, AGENT_STREAM, call.call_sid, now)  # this call's
        return connect_stream(url, self.tokens.with_token(self.resume_parameters(call), now), self.fallback)

    def _failed(self, sid: str, why: str) -> bool:
        log.warning("call %s: handoff failed: %s; the call ends as in a drain", sid, why)
        self.metrics.handoffs.labels("failed").inc()
        return False

    async def resume(self, call: Call) -> None:
        """The bridge's ``prepare``: a handed-over call gets its saved state before its session opens."""
        if not call.parameters.get(RESUME) or not call.call_sid:
            return
        saved = await self.state.take(handoff_key(call.call_sid))
        if saved is None:
            log.warning("call %s: handed over, but its saved state is gone; it starts afresh", call.call_sid)
            self.metrics.handoffs.labels("state_missing").inc()
            return
        call.resume(saved)
        self.transcripts.carry_on(call.call_sid, saved.get("transcript", []))
        log.info("call %s: resumed here (%d conversation items)", call.call_sid, len(saved.get("conversation", ())))
        self.metrics.handoffs.labels("resumed").inc()
