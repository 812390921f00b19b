"""The transcript webhook's delivery rules, against a real HTTP receiver on loopback: which
failures are retried, when it gives up, and the bound on turns waiting to be delivered."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import serve_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from telephony.serve import transcripts
from telephony.serve.transcripts import WEBHOOK_ATTEMPTS, TranscriptHub


class Receiver:
    """Answers each request with the next status of ``statuses`` (204 once they run out)."""

    def __init__(self, statuses=(), hold: asyncio.Event | None = None) -> None:
        self.statuses = list(statuses)
        self.hold = hold
        self.attempts: list[int] = []  # seq of each request, in order
        self.delivered: list[int] = []

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            turn = await request.json()
            self.attempts.append(turn["seq"])
            if self.hold is not None:
                await self.hold.wait()
            status = self.statuses.pop(0) if self.statuses else 204
            if status < 300:
                self.delivered.append(turn["seq"])
            return Response(status_code=status)
        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(transcripts, "WEBHOOK_BACKOFF_S", 0.01)


async def deliver(receiver: Receiver, turns: int) -> None:
    async with serve_app(receiver.app()) as host:
        hub = TranscriptHub(f"http://{host}/hook")
        for i in range(turns):
            hub.publish("CA1", {"speaker": "caller", "text": f"turn {i + 1}"})
        await hub.drain(10.0)
        await hub.close()


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_a_turn_the_receiver_refuses_is_not_retried(status, caplog):
    receiver = Receiver([status])
    await deliver(receiver, 2)
    assert receiver.attempts == [1, 2] and receiver.delivered == [2]
    assert f"call CA1: transcript turn 1 not delivered: HTTP {status}" in caplog.text


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_a_busy_or_failing_receiver_is_retried(status):
    receiver = Receiver([status, status])
    await deliver(receiver, 2)
    assert receiver.attempts == [1, 1, 1, 2] and receiver.delivered == [1, 2]


async def test_delivery_gives_up_after_five_attempts_and_goes_on_with_the_next_turn(caplog):
    receiver = Receiver([500] * 10)
    with caplog.at_level(logging.WARNING, "telephony.transcripts"):
        await deliver(receiver, 2)
    assert WEBHOOK_ATTEMPTS == 5
    assert receiver.attempts == [1] * 5 + [2] * 5 and receiver.delivered == []
    assert "call CA1: transcript turn 1 not delivered: HTTP 500" in caplog.text


async def test_turns_past_the_queue_bound_are_dropped_and_logged(monkeypatch, caplog):
    monkeypatch.setattr(transcripts, "QUEUE_LIMIT", 3)
    hold = asyncio.Event()
    receiver = Receiver(hold=hold)
    async with serve_app(receiver.app()) as host:
        hub = TranscriptHub(f"http://{host}/hook")
        for i in range(5):  # published at once, as a call would: the worker has not run yet
            hub.publish("CA1", {"speaker": "caller", "text": f"turn {i + 1}"})
        hold.set()
        await hub.drain(10.0)
        await hub.close()
    assert receiver.delivered == [1, 2, 3]
    assert "call CA1: transcript webhook is 3 turns behind; turn 4 dropped" in caplog.text
    assert "turn 5 dropped" in caplog.text
