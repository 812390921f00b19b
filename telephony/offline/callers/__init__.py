"""The caller's side of each carrier the service speaks: its signed webhook, the markup it reads
back and its media websocket (``base.Carrier``). A carrier added to the service is one more module
here and one more entry in ``CARRIERS``; ``telephony simulate --carrier``, ``telephony demo
--carrier`` and ``benchmarks/load.py --carrier`` all take their choices from it."""

from __future__ import annotations

from telephony.offline.callers import plivo, signalwire, telnyx, twilio, vonage
from telephony.offline.callers.base import Carrier, DialError, Signer, StreamInstructions

CARRIERS: dict[str, Carrier] = {c.name: c for c in (twilio.CARRIER, telnyx.CARRIER, plivo.CARRIER,
                                                    signalwire.CARRIER, vonage.CARRIER)}

__all__ = ["CARRIERS", "Carrier", "DialError", "Signer", "StreamInstructions", "carrier"]


def carrier(name: str) -> Carrier:
    try:
        return CARRIERS[name]
    except KeyError:
        raise DialError(f"unknown carrier {name!r}: expected one of {', '.join(CARRIERS)}") from None
