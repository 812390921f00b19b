"""A fake Plivo built to ../shared/PROTOCOLS-carriers.md (Plivo §1-§4): webhooks signed V3 with
plivo-python's own helpers, the audio-streaming websocket's messages as listed there (no stop
frame: the socket closes), and a REST server on loopback that records what it is asked."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import websockets
from conftest import serve_app
from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FRAME = 160  # 20 ms of μ-law at 8 kHz
AUTH_ID, AUTH_TOKEN = "MAFAKEAUTHID0000000", "plivo-auth-token-secret"


def sign(url: str, method: str, fields: dict[str, str], token: str = AUTH_TOKEN) -> dict[str, str]:
    """The headers Plivo adds, computed by plivo-python (as Plivo's servers are documented to)."""
    nonce = uuid.uuid4().hex[:20]
    base = (construct_get_url(url, dict(fields)) if method == "GET" else construct_post_url(url, dict(fields)))
    signature = get_signature_v3(token.encode(), base.decode(), nonce.encode()).decode()
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}


async def post_webhook(host: str, path_and_query: str, fields: dict[str, str], token: str | None = AUTH_TOKEN,
                       public_base: str = "https://bridge.example.com", method: str = "POST") -> httpx.Response:
    """As Plivo calls an answer/callback URL: a form POST (or GET), behind a proxy, signed."""
    headers = {"X-Forwarded-Proto": public_base.split("://")[0], "Host": public_base.split("://")[1]}
    if token is not None:
        headers.update(sign(public_base + path_and_query, method, fields, token))
    async with httpx.AsyncClient() as client:
        if method == "GET":
            joiner = "&" if "?" in path_and_query else "?"
            return await client.get(f"http://{host}{path_and_query}{joiner}{urlencode(fields)}", headers=headers)
        return await client.post(f"http://{host}{path_and_query}", data=fields, headers=headers)


def stream_from_xml(text: str, host: str) -> tuple[str, ET.Element]:
    stream = next(ET.fromstring(text).iter("Stream"))
    url = (stream.text or "").strip()
    return urlunsplit(urlsplit(url)._replace(scheme="ws", netloc=host)), stream


@dataclass
class PlivoCallResult:
    agent: bytes = b""  # what the caller heard, at the playout clock (cleared audio cut off)
    sent: list[dict] = field(default_factory=list)  # every message the app sent
    clears: list[float] = field(default_factory=list)  # seconds into the call
    played: list[str] = field(default_factory=list)  # checkpoints echoed as playedStream
    closed_by_app: bool = False


class FakePlivoCaller:
    """One Plivo call's audio stream: real-time 20 ms frames in, a playout queue for playAudio
    (checkpoints echoed when the audio before them has played; clearAudio empties the queue,
    checkpoints included, and answers clearedAudio: the strict reading of Plivo's docs)."""

    def __init__(self, url: str, *, call_uuid: str, caller_audio: bytes, duration_s: float | None = None,
                 dtmf_at: dict[float, str] | None = None) -> None:
        self.url, self.call_uuid, self.caller_audio = url, call_uuid, caller_audio
        self.duration_s = duration_s if duration_s is not None else len(caller_audio) / 8000 + 1.0
        self.dtmf_at = dict(sorted((dtmf_at or {}).items()))
        self.stream_id = str(uuid.uuid4())
        self.result = PlivoCallResult()
        self._queue: list[tuple[str, bytes | str]] = []
        self._seq = 0
        self.ws = None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def run(self) -> PlivoCallResult:
        try:
            async with websockets.connect(self.url) as ws:
                self.ws = ws
                self._t0 = time.monotonic()
                await ws.send(json.dumps({"event": "start", "sequenceNumber": self._next_seq(), "start": {
                    "callId": self.call_uuid, "streamId": self.stream_id, "accountId": AUTH_ID,
                    "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
                    "extra_headers": ""}))
                receiver = asyncio.create_task(self._receive(ws))
                try:
                    await self._send_audio(ws, receiver)
                finally:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await receiver
                # Plivo sends no stop: the call ends, the socket closes.
        except websockets.ConnectionClosed:
            self.result.closed_by_app = True
        return self.result

    async def _send_audio(self, ws, receiver: asyncio.Task) -> None:
        for k in range(int(self.duration_s * 50)):
            if receiver.done():
                return
            await asyncio.sleep(max(0.0, self._t0 + k * 0.02 - time.monotonic()))
            await self._play(ws, 0.02)
            while self.dtmf_at and next(iter(self.dtmf_at)) <= k * 0.02:
                digit = self.dtmf_at.pop(next(iter(self.dtmf_at)))
                await ws.send(json.dumps({"event": "dtmf", "sequenceNumber": self._next_seq(),
                                          "streamId": self.stream_id, "dtmf": {"digit": digit}}))
            chunk = self.caller_audio[k * FRAME:(k + 1) * FRAME]
            chunk += b"\xff" * (FRAME - len(chunk))
            await ws.send(json.dumps({"event": "media", "sequenceNumber": self._next_seq(), "streamId": self.stream_id,
                                      "media": {"track": "inbound", "timestamp": str(int(time.time() * 1000)),
                                                "chunk": k + 1, "payload": base64.b64encode(chunk).decode()},
                                      "extra_headers": ""}))

    async def _play(self, ws, seconds: float) -> None:
        want = int(seconds * 8000)
        while self._queue and (want > 0 or self._queue[0][0] == "checkpoint"):
            kind, item = self._queue[0]
            if kind == "checkpoint":
                self._queue.pop(0)
                self.result.played.append(item)
                await ws.send(json.dumps({"event": "playedStream", "streamId": self.stream_id, "name": item}))
                continue
            take = item[:want]
            self.result.agent += take
            want -= len(take)
            if len(take) == len(item):
                self._queue.pop(0)
            else:
                self._queue[0] = ("audio", item[len(take):])
        self.result.agent += b"\xff" * want

    async def _receive(self, ws) -> None:
        try:
            async for text in ws:
                message = json.loads(text)
                self.result.sent.append(message)
                event = message["event"]
                if event == "playAudio":
                    media = message["media"]
                    assert (media["contentType"], media["sampleRate"]) == ("audio/x-mulaw", 8000), media
                    self._queue.append(("audio", base64.b64decode(media["payload"])))
                elif event == "checkpoint":
                    assert message["streamId"] == self.stream_id
                    self._queue.append(("checkpoint", message["name"]))
                elif event == "clearAudio":
                    assert message["streamId"] == self.stream_id
                    self.result.clears.append(time.monotonic() - self._t0)
                    self._queue = []
                    await ws.send(json.dumps({"event": "clearedAudio", "sequenceNumber": self._next_seq(),
                                              "streamId": self.stream_id}))
        except websockets.ConnectionClosed:
            pass
        self.result.closed_by_app = True


class FakePlivoRest:
    """Plivo's REST API on loopback: records (method, path, JSON body, Authorization)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, str]] = []
        self.hangup_status = 204
        self.transfer_status = 202  # 404: the call is gone (hung up meanwhile)

    def app(self) -> Starlette:
        async def record(request: Request) -> dict:
            body = await request.json() if await request.body() else {}
            self.requests.append((request.method, request.url.path, body, request.headers.get("authorization", "")))
            return body

        async def create(request: Request):
            await record(request)
            return JSONResponse({"api_id": "api-1", "message": "call fired", "request_uuid": "req-uuid-1"},
                                status_code=201)

        async def call(request: Request):
            await record(request)
            if request.method == "DELETE":
                if self.hangup_status == 404:
                    return JSONResponse({"api_id": "api-2", "error": "not found"}, status_code=404)
                return Response(status_code=self.hangup_status)
            if self.transfer_status == 404:
                return JSONResponse({"api_id": "api-3", "error": "call not found"}, status_code=404)
            return JSONResponse({"api_id": "api-3", "message": "call transferred"}, status_code=202)

        return Starlette(routes=[Route("/v1/Account/{auth_id}/Call/", create, methods=["POST"]),
                                 Route("/v1/Account/{auth_id}/Call/{uuid}/", call, methods=["POST", "DELETE"])])

    @contextlib.asynccontextmanager
    async def running(self):
        async with serve_app(self.app()) as host:
            self.base_url = f"http://{host}"
            yield self
