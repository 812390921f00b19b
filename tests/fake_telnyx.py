"""A fake Telnyx built to ../shared/PROTOCOLS-carriers.md (Telnyx §2-§4): signed webhooks
(Ed25519 with ``cryptography``), the media websocket's messages exactly as listed there, and a
Call Control REST server on loopback that records what it is asked."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

import httpx
import websockets
from conftest import serve_app
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from telephony.offline.callers.telnyx import TelnyxKey

FRAME = 160  # 20 ms of PCMU


class TelnyxKeys(TelnyxKey):
    """A fresh signing key: the offline Telnyx caller's (``telephony simulate --carrier telnyx`` signs so)."""

    def __init__(self) -> None:
        super().__init__(Ed25519PrivateKey.generate())

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        return self("POST", "", {}, body, timestamp)


async def post_webhook(host: str, path: str, form: dict[str, str], keys: TelnyxKeys | None,
                       public_base: str = "https://bridge.example.com", *, json_body: dict | None = None,
                       timestamp: int | None = None) -> httpx.Response:
    """As Telnyx POSTs a TeXML webhook: form-encoded (or JSON for Call Control), behind a proxy."""
    if json_body is not None:
        body, content_type = json.dumps(json_body).encode(), "application/json"
    else:
        body, content_type = urlencode(form).encode(), "application/x-www-form-urlencoded"
    headers = {"X-Forwarded-Proto": public_base.split("://")[0], "Host": public_base.split("://")[1],
               "Content-Type": content_type}
    if keys is not None:
        headers.update(keys.headers(body, timestamp))
    async with httpx.AsyncClient() as client:
        return await client.post(f"http://{host}{path}", content=body, headers=headers)


@dataclass
class TelnyxCallResult:
    agent: bytes = b""  # what the caller heard, at the playout clock (cleared audio cut off)
    sent: list[dict] = field(default_factory=list)  # every message the app sent
    clears: list[float] = field(default_factory=list)  # seconds into the call
    marks_echoed: list[str] = field(default_factory=list)
    media_sizes: list[int] = field(default_factory=list)
    closed_by_app: bool = False


class FakeTelnyxCaller:
    """The media websocket of one Telnyx call: real-time 20 ms frames in, a playout queue for
    what the app sends (marks echoed when the audio before them has played, a clear empties it)."""

    def __init__(self, url: str, *, call_control_id: str, caller_audio: bytes, custom_parameters=None,
                 client_state: str | None = None, duration_s: float | None = None,
                 dtmf_at: dict[float, str] | None = None, shuffle_pairs: bool = False,
                 hang_up: bool = True) -> None:
        self.url, self.call_control_id = url, call_control_id
        self.caller_audio, self.custom_parameters, self.client_state = caller_audio, custom_parameters, client_state
        self.duration_s = duration_s if duration_s is not None else len(caller_audio) / 8000 + 1.0
        self.dtmf_at = dict(sorted((dtmf_at or {}).items()))
        self.shuffle_pairs = shuffle_pairs  # swap each pair of media frames: Telnyx's order is not guaranteed
        self.hang_up = hang_up
        self.result = TelnyxCallResult()
        self._queue: list[tuple[str, bytes | str]] = []  # ("audio", bytes) | ("mark", name)
        self._seq = 0
        self._due: list[str] = []  # marks reached by the playout, to echo

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def run(self) -> TelnyxCallResult:
        try:
            await self._run()
        except websockets.ConnectionClosed:  # refused: closed by the app before or after the start
            self.result.closed_by_app = True
        return self.result

    async def _run(self) -> None:
        async with websockets.connect(self.url) as ws:
            self._t0 = time.monotonic()
            await ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
            start = {"user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": self.call_control_id,
                     "call_session_id": "a-session", "from": "+15551230000", "to": "+15559870000", "tags": [],
                     "client_state": self.client_state,
                     "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}
            if self.custom_parameters is not None:
                start["custom_parameters"] = self.custom_parameters
            await ws.send(json.dumps({"event": "start", "sequence_number": self._next_seq(),
                                      "stream_id": "32de0dea-53cb-4b21-89a4-9e1819c043bc", "start": start}))
            receiver = asyncio.create_task(self._receive(ws))
            try:
                await self._send_audio(ws, receiver)
                if self.hang_up and not receiver.done():
                    await ws.send(json.dumps({"event": "stop", "sequence_number": self._next_seq(),
                                              "stream_id": "32de0dea-53cb-4b21-89a4-9e1819c043bc",
                                              "stop": {"call_control_id": self.call_control_id}}))
                    await asyncio.wait_for(receiver, 3)
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiver

    def _media(self, k: int) -> str:
        chunk = self.caller_audio[k * FRAME:(k + 1) * FRAME]
        chunk = chunk + b"\xff" * (FRAME - len(chunk))
        return json.dumps({"event": "media", "sequence_number": self._next_seq(),
                           "stream_id": "32de0dea-53cb-4b21-89a4-9e1819c043bc",
                           "media": {"track": "inbound", "chunk": str(k + 1), "timestamp": str(k * 20),
                                     "payload": base64.b64encode(chunk).decode()}})

    async def _send_audio(self, ws, receiver: asyncio.Task) -> None:
        frames = int(self.duration_s * 50)
        held: str | None = None
        for k in range(frames):
            if receiver.done():
                return
            await asyncio.sleep(max(0.0, self._t0 + k * 0.02 - time.monotonic()))
            self._play(0.02)
            await self._echo_marks(ws)
            while self.dtmf_at and next(iter(self.dtmf_at)) <= k * 0.02:
                at = next(iter(self.dtmf_at))
                await ws.send(json.dumps({"event": "dtmf", "sequence_number": self._next_seq(),
                                          "stream_id": "32de0dea-53cb-4b21-89a4-9e1819c043bc",
                                          "dtmf": {"digit": self.dtmf_at.pop(at)}}))
            message = self._media(k)
            if self.shuffle_pairs and held is None:
                held = message
                continue
            await ws.send(message)
            if held is not None:  # the earlier frame arrives second
                await ws.send(held)
                held = None
        await self._echo_marks(ws)

    def _play(self, seconds: float) -> None:
        """Plays ``seconds`` of the queue (silence when it is empty); marks reached are echoed."""
        want = int(seconds * 8000)
        while self._queue and (want > 0 or self._queue[0][0] == "mark"):
            kind, item = self._queue[0]
            if kind == "mark":
                self._due.append(self._queue.pop(0)[1])
                continue
            take = item[:want]
            self.result.agent += take
            want -= len(take)
            if len(take) == len(item):
                self._queue.pop(0)
            else:
                self._queue[0] = ("audio", item[len(take):])
        self.result.agent += b"\xff" * want

    async def _echo_marks(self, ws) -> None:
        while self._queue and self._queue[0][0] == "mark":
            self._due.append(self._queue.pop(0)[1])
        due, self._due = self._due, []
        for name in due:
            self.result.marks_echoed.append(name)
            await ws.send(json.dumps({"event": "mark", "sequence_number": self._next_seq(),
                                      "stream_id": "32de0dea-53cb-4b21-89a4-9e1819c043bc",
                                      "mark": {"name": name}}))

    async def _receive(self, ws) -> None:
        try:
            async for text in ws:
                message = json.loads(text)
                self.result.sent.append(message)
                event = message["event"]
                if event == "media":
                    audio = base64.b64decode(message["media"]["payload"])
                    self.result.media_sizes.append(len(audio))
                    self._queue.append(("audio", audio))
                elif event == "mark":
                    self._queue.append(("mark", message["mark"]["name"]))
                elif event == "clear":
                    self.result.clears.append(time.monotonic() - self._t0)
                    # A clear drops queued media; the marks queued are returned (PROTOCOLS: "a clear
                    # also returns queued marks").
                    marks = [item for kind, item in self._queue if kind == "mark"]
                    self._queue = [("mark", name) for name in marks]
                await self._echo_marks(ws)
        except websockets.ConnectionClosed:
            pass
        self.result.closed_by_app = True


class FakeTelnyxRest:
    """Call Control on loopback: records each request (path, JSON body, Authorization)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, str]] = []
        self.hangup_status = 200

    def app(self) -> Starlette:
        async def calls(request: Request):
            body = await request.json()
            self.requests.append((request.url.path, body, request.headers.get("authorization", "")))
            return JSONResponse({"data": {"call_control_id": "v3:fake-outbound-call", "call_leg_id": "leg",
                                          "call_session_id": "session", "is_alive": False, "record_type": "call"}})

        async def action(request: Request):
            body = await request.json()
            self.requests.append((request.url.path, body, request.headers.get("authorization", "")))
            if self.hangup_status != 200:
                return JSONResponse({"errors": [{"code": "90018", "title": "Call has already ended"}]},
                                    status_code=self.hangup_status)
            return JSONResponse({"data": {"result": "ok"}})

        return Starlette(routes=[Route("/v2/calls", calls, methods=["POST"]),
                                 Route("/v2/calls/{call_id}/actions/{action}", action, methods=["POST"])])

    @contextlib.asynccontextmanager
    async def running(self):
        async with serve_app(self.app()) as host:
            self.base_url = f"http://{host}"
            yield self
