"""What OpenAI's offline SIP sides share: the signed webhook, the loopback server, the phone line.

Two engines answer OpenAI's SIP trunk, so there are two offline OpenAI sides: the Realtime one
(``openai_sip_peer``) and the GPT-Live ones (``live_sip_peer``: scripted; ``local_live_sip``: the
local engine). All of them ring the service with a standard-webhooks signed event, serve OpenAI's
REST and sideband from a Starlette app on loopback, and (those with the local engine) play the SIP
leg itself: 20 ms μ-law frames each way from the accept on, both kept for a stereo recording.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import uuid
from typing import Callable, Sequence

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of μ-law at 8 kHz: the phone line's unit
SILENCE = b"\xff" * FRAME_BYTES


# --- The webhook ---


def sign_webhook(secret: str, body: bytes, webhook_id: str, timestamp: int) -> dict[str, str]:
    """Standard-webhooks headers as OpenAI sends them: ``v1,`` base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}``, keyed by the base64 part of a ``whsec_`` secret."""
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(), "content-type": "application/json"}


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


async def deliver(url: str, body: bytes, secret: str, webhook_id: str | None = None,
                  timestamp: int | None = None) -> int:
    """POSTs one signed webhook as OpenAI does; its HTTP status (a 2xx only acknowledges it)."""
    headers = sign_webhook(secret, body, webhook_id or "wh_" + uuid.uuid4().hex,
                           timestamp if timestamp is not None else int(time.time()))
    async with httpx.AsyncClient(timeout=15) as client:
        r = await client.post(url, content=body, headers=headers)
    return r.status_code


# --- OpenAI's API on loopback ---


class LoopbackServer:
    """``routes`` under uvicorn: ``await start()`` returns once it listens (``port`` 0: a free
    one, then ``self.port`` says which); ``await stop()``. ``ws``: uvicorn's websocket protocol."""

    def __init__(self, routes: Sequence[BaseRoute], host: str = "127.0.0.1", port: int = 0,
                 ws: type | str = "auto") -> None:
        self.host, self.port = host, port
        self._server = uvicorn.Server(uvicorn.Config(Starlette(routes=list(routes)), host=host, port=port,
                                                     log_level="warning", lifespan="off", ws=ws))
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # it could not listen: say why
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


# --- The SIP leg ---


async def run_line(caller_audio: bytes, dtmf: Sequence[tuple[float, str]], listen_s: float, ended: asyncio.Event,
                   caller: bytearray, agent: bytearray, *, hear: Callable[[bytes, int], None],
                   press: Callable[[str], None], play: Callable[[int], bytes]) -> None:
    """The line's clock, from the accept (session time 0) until ``ended`` or the caller hangs up
    (``listen_s`` after their recording ends). Each 20 ms frame ``n``: the caller's next frame
    (silence once the recording is over) goes to ``hear(frame, n)``; the keys due by then to
    ``press``; ``play(n)`` gives the agent's frame the caller hears (short: padded with silence).
    Both sides are appended to ``caller`` and ``agent``: the stereo recording, frame for frame.
    The schedule is absolute, so a late wake-up catches up instead of stretching the call."""
    loop = asyncio.get_running_loop()
    keys = sorted(dtmf)
    start = loop.time()
    frames_total = len(caller_audio) // FRAME_BYTES + int(listen_s * 1000 / FRAME_MS)
    n = 0
    while not ended.is_set() and n < frames_total:
        frame = caller_audio[n * FRAME_BYTES:(n + 1) * FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
        caller += frame
        hear(frame, n)
        while keys and keys[0][0] * 1000 <= n * FRAME_MS:
            press(keys.pop(0)[1])
        agent += play(n).ljust(FRAME_BYTES, b"\xff")
        n += 1
        await asyncio.sleep(max(0.0, start + n * FRAME_MS / 1000 - loop.time()))
