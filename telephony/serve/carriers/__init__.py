"""The carrier seam, control side: what the shells ask of a carrier's REST API during a call.

A carrier is two small pieces beside Twilio's (DESIGN.md, "Carriers"):

- a media wire (``wire/media.py``: its websocket frames ⇄ the core's neutral events), and
- a control adapter: verify its webhooks, answer them with markup that opens a bidirectional
  stream to ``PUBLIC_URL`` carrying our signed stream parameters, place an outbound call that
  streams to us, hang up, transfer, and AMD where offered.

The webhook half (verify, answer, the routes and their callbacks) is the carrier's module here
(``telnyx.py``) plus its markup in ``wire/``; Twilio's lives in ``serve/app.py``, ``security.py``
and ``wire/twiml.py`` as before. The in-call half every bridge uses is ``CarrierControl`` below:
Twilio's ``twilio_rest.CallControl`` and ``telnyx.TelnyxControl`` both implement it, so the
bridge hangs up and transfers without knowing which carrier it serves.
"""

from __future__ import annotations

from typing import Protocol


class CarrierError(Exception):
    """A carrier refused a request: ``status`` is its HTTP status (502/504: unreachable, no answer)."""

    def __init__(self, status: int, message: str, code: int | str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class CarrierControl(Protocol):
    """A live call's control through its carrier's REST API. ``call_id``: the carrier's own id."""

    async def hang_up(self, call_id: str) -> None: ...

    async def transfer(self, call_id: str, target: str, by_refer: bool = False) -> None: ...

    async def aclose(self) -> None: ...


class MovableCall(CarrierControl, Protocol):
    """A carrier that can point a live call at new markup, so a call can be handed over on a deploy:
    ``target`` is an answer URL (SignalWire, Plivo) or the markup itself (Vonage's NCCO). Twilio's
    own handoff sends its TwiML inline through ``redirect``."""

    async def move(self, call_id: str, target) -> None: ...
