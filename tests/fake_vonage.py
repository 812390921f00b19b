"""A fake Vonage built to ../shared/PROTOCOLS-carriers.md (Vonage §1-§4): signed webhooks (HS256
JWTs with payload_hash, checked against vonage-jwt's own verify_signature in the tests), the
Voice API websocket (websocket:connected with the NCCO's headers, binary L16 16 kHz frames of
20 ms both ways, websocket:dtmf, clear → websocket:cleared; no marks), and a REST server on
loopback that checks the application JWT (RS256) with the application's public key."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt
import numpy as np
import websockets
from conftest import serve_app
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

RATE = 16000
FRAME = 640  # 20 ms of 16-bit PCM at 16 kHz
SECRET = "vonage-signature-secret-0123456789abcdef"  # 40 bytes: PyJWT's HS256 minimum is 32
API_KEY = "abcd1234"
APPLICATION_ID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"


def pcm_tone(freq: float, seconds: float, amplitude: float = 8000.0) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def pcm_silence(seconds: float) -> bytes:
    return bytes(2 * int(RATE * seconds))


def pcm_dominant_freq(pcm: bytes, rate: int = RATE) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    if len(x) < 64 or np.sqrt(np.mean(x ** 2)) < 100:
        return 0.0
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(mag) * rate / len(x))


def pcm_spans(pcm: bytes, frame: int = 320, threshold: float = 200.0) -> list[tuple[float, float]]:
    """(start s, end s) of the stretches that are not silent, 20 ms by 20 ms."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    spans, start = [], None
    for i in range(0, len(x) - frame + 1, frame):
        loud = np.sqrt(np.mean(x[i:i + frame] ** 2)) >= threshold
        if loud and start is None:
            start = i
        elif not loud and start is not None:
            spans.append((start / RATE, i / RATE))
            start = None
    if start is not None:
        spans.append((start / RATE, len(x) / RATE))
    return spans


def signed_jwt(payload: bytes, secret: str = SECRET, payload_hash: str | None = None, **claims) -> str:
    """The Authorization token Vonage adds to a signed webhook (its documented claims)."""
    now = int(time.time())
    body = {"iat": now, "jti": str(uuid.uuid4()), "iss": "Vonage", "api_key": API_KEY,
            "application_id": APPLICATION_ID,
            "payload_hash": payload_hash if payload_hash is not None else hashlib.sha256(payload).hexdigest(),
            **claims}
    return jwt.encode(body, secret, algorithm="HS256")


async def webhook(host: str, path_and_query: str, fields: dict, secret: str | None = SECRET,
                  method: str = "POST", public_base: str = "https://bridge.example.com",
                  payload_hash: str | None = None) -> httpx.Response:
    """As Vonage calls an answer/event URL: a JSON POST (or a GET with the fields in its query), signed."""
    headers = {"X-Forwarded-Proto": public_base.split("://")[0], "Host": public_base.split("://")[1]}
    async with httpx.AsyncClient() as client:
        if method == "GET":
            request = client.build_request("GET", f"http://{host}{path_and_query}", params=fields, headers=headers)
            if secret is not None:
                payload = json.dumps({k: str(v) for k, v in fields.items()}, separators=(",", ":")).encode()
                request.headers["Authorization"] = f"Bearer {signed_jwt(payload, secret, payload_hash)}"
            return await client.send(request)
        body = json.dumps(fields).encode()
        headers["Content-Type"] = "application/json"
        if secret is not None:
            headers["Authorization"] = f"Bearer {signed_jwt(body, secret, payload_hash)}"
        return await client.post(f"http://{host}{path_and_query}", content=body, headers=headers)


def websocket_of(ncco: list[dict], host: str) -> tuple[str, dict]:
    """The NCCO's websocket endpoint: its URI (to this host over ws://) and the endpoint itself."""
    (endpoint,) = ncco[0]["endpoint"]
    url = urlunsplit(urlsplit(endpoint["uri"])._replace(scheme="ws", netloc=host))
    return url, endpoint


@dataclass
class VonageCallResult:
    agent: bytes = b""  # what the caller heard (16 kHz PCM) at the playout clock, cleared audio cut off
    frames: list[tuple[float, bytes]] = field(default_factory=list)  # binary frames received (s, bytes)
    texts: list[tuple[float, dict]] = field(default_factory=list)  # text messages received (s, JSON)
    clears: list[float] = field(default_factory=list)  # seconds into the call
    closed_by_app: bool = False
    ended_at: float | None = None  # when the app closed the socket


class FakeVonageCaller:
    """One call's websocket: connected (the endpoint's headers at the top level), then a 640-byte
    frame every 20 ms from the caller, and a playout queue for the frames the app sends (played
    at real time; ``clear`` empties it and is answered with ``websocket:cleared``)."""

    def __init__(self, url: str, headers: dict, *, caller_audio: bytes, duration_s: float | None = None,
                 dtmf_at: dict[float, str] | None = None, content_type: str = "audio/l16;rate=16000") -> None:
        self.url, self.headers, self.caller_audio = url, headers, caller_audio
        self.duration_s = duration_s if duration_s is not None else len(caller_audio) / (2 * RATE) + 1.0
        self.dtmf_at = dict(sorted((dtmf_at or {}).items()))
        self.content_type = content_type
        self.result = VonageCallResult()
        self._queue = bytearray()
        self._ws = None

    async def hang_up(self) -> None:
        """The call ended at Vonage (a REST hang-up): the socket closes, when the playout stops."""
        self.result.ended_at = time.monotonic() - self._t0
        if self._ws is not None:
            await self._ws.close()

    async def run(self) -> VonageCallResult:
        try:
            async with websockets.connect(self.url) as ws:
                self._t0, self._ws = time.monotonic(), ws
                await ws.send(json.dumps({"event": "websocket:connected", "content-type": self.content_type,
                                          **self.headers}))
                receiver = asyncio.create_task(self._receive(ws))
                try:
                    await self._send_audio(ws, receiver)
                finally:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await receiver
        except (websockets.ConnectionClosed, websockets.InvalidStatus):  # closed, or refused at the handshake
            self.result.closed_by_app = self.result.closed_by_app or self._ws is None or self.result.ended_at is None
        return self.result

    async def _send_audio(self, ws, receiver: asyncio.Task) -> None:
        for k in range(int(self.duration_s * 50)):
            if receiver.done():
                return
            await asyncio.sleep(max(0.0, self._t0 + k * 0.02 - time.monotonic()))
            played = bytes(self._queue[:FRAME])
            del self._queue[:FRAME]
            self.result.agent += played + bytes(FRAME - len(played))
            while self.dtmf_at and next(iter(self.dtmf_at)) <= k * 0.02:
                digit = self.dtmf_at.pop(next(iter(self.dtmf_at)))
                await ws.send(json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260}))
            chunk = self.caller_audio[k * FRAME:(k + 1) * FRAME]
            await ws.send(chunk + bytes(FRAME - len(chunk)))

    async def _receive(self, ws) -> None:
        try:
            async for message in ws:
                at = time.monotonic() - self._t0
                if isinstance(message, bytes):
                    self.result.frames.append((at, message))
                    self._queue += message
                    continue
                data = json.loads(message)
                self.result.texts.append((at, data))
                if data.get("action") == "clear":
                    self.result.clears.append(at)
                    self._queue.clear()
                    await ws.send(json.dumps({"event": "websocket:cleared"}))
        except websockets.ConnectionClosed:
            pass
        if self.result.ended_at is None:
            self.result.closed_by_app = True
            self.result.ended_at = time.monotonic() - self._t0


def application_key() -> tuple[bytes, rsa.RSAPublicKey]:
    """A fresh application key pair: the private key as PEM (what VONAGE_PRIVATE_KEY names), the public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, key.public_key()


class FakeVonageRest:
    """Vonage's Voice REST API on loopback: checks each request's application JWT (RS256, with
    the public key) and records (method, path, JSON body, the JWT's claims)."""

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        self.public_key = public_key
        self.requests: list[tuple[str, str, dict, dict]] = []
        self.hangup_status = 204
        self.on_hangup = None  # a coroutine function: the call's websocket closing, as Vonage's does
        self.call_uuid = "63f61863-4a51-4f6b-86e1-46edebcf9356"

    def app(self) -> Starlette:
        async def authorised(request: Request) -> dict | Response:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            try:
                claims = jwt.decode(token, self.public_key, algorithms=["RS256"])
            except jwt.PyJWTError as exc:
                return JSONResponse({"title": f"Bad JWT: {type(exc).__name__}"}, status_code=401)
            if scheme != "Bearer" or claims.get("application_id") != APPLICATION_ID:
                return JSONResponse({"title": "Invalid Application ID"}, status_code=401)
            body = await request.json() if await request.body() else {}
            self.requests.append((request.method, request.url.path, body, claims))
            return claims

        async def create(request: Request):
            if isinstance(checked := await authorised(request), Response):
                return checked
            return JSONResponse({"uuid": self.call_uuid, "status": "started", "direction": "outbound",
                                 "conversation_uuid": "CON-f972836a-550f-45fa-956c-12a2ab5b7d22"}, status_code=201)

        async def modify(request: Request):
            if isinstance(checked := await authorised(request), Response):
                return checked
            if self.requests[-1][2].get("action") == "hangup":
                if self.hangup_status != 204:
                    return JSONResponse({"title": "Not Found"}, status_code=self.hangup_status)
                if self.on_hangup is not None:
                    await self.on_hangup()
            return Response(status_code=204)

        return Starlette(routes=[Route("/v1/calls", create, methods=["POST"]),
                                 Route("/v1/calls/{uuid}", modify, methods=["PUT"])])

    @contextlib.asynccontextmanager
    async def running(self):
        async with serve_app(self.app()) as host:
            self.base_url = f"http://{host}"
            yield self
