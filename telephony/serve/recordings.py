"""Recordings of what each side heard, written beside the audio path, to a directory or to S3.

The bridge feeds a call's ``Tape`` (telephony/core/tape.py) as messages pass, which costs a few
microseconds a frame; once a second a finished block goes to the call's writer task, which does
all the I/O. The recording is spooled to a local file as it goes (never held whole in memory):
a file store renames the spool into place at the end; an S3 store uploads it in parts as the
call goes (multipart upload), the first part last, once the WAV header knows the length.

A store that fails costs the call nothing: blocks the writer cannot keep up with are dropped
(counted), and a failed upload is retried, then logged and left in the spool directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Protocol
from urllib.parse import urlsplit

from starlette.responses import JSONResponse, Response, StreamingResponse

from telephony.core.tape import Tape, wav_header

log = logging.getLogger("telephony.recordings")

FLUSH_S = 1.0  # how often finished audio goes to the writer
QUEUE_BLOCKS = 30  # blocks (seconds) the writer may fall behind before audio is dropped
HEADER_BYTES = len(wav_header(0))
S3_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)
UPLOAD_TRIES = 3
CLOSE_TIMEOUT_S = 30.0
MEDIA_TYPE = "audio/wav"
DISK_THREADS = 2  # spool writes, renames, reads for GET …/recording
STORE_THREADS = 4  # S3 requests (each may wait its read timeout on a hung store)


# Recordings' blocking calls run in thread pools of their own, never the loop's default executor:
# that one also resolves host names for new connections (the Realtime service's, Twilio's REST
# API), so a hung S3 holding its few threads for 30 s each would stall every new call's
# connection. Disk and store are apart too, so a hung store never stops the spool being written.
_pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(name: str, threads: int) -> concurrent.futures.ThreadPoolExecutor:
    with _pools_lock:
        if name not in _pools:
            _pools[name] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"recording-{name}")
        return _pools[name]


async def on_disk(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``fn`` in the recordings' disk threads."""
    return await asyncio.get_running_loop().run_in_executor(_pool("disk", DISK_THREADS),
                                                            functools.partial(fn, *args, **kwargs))


async def on_store(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``fn`` (an S3 request) in the recordings' store threads."""
    return await asyncio.get_running_loop().run_in_executor(_pool("store", STORE_THREADS),
                                                            functools.partial(fn, *args, **kwargs))


class RecordingsError(ValueError):
    """A RECORDINGS_URL that cannot be used; the text says why."""


def object_name(call_sid: str, stream_sid: str, started: datetime) -> str:
    """``<call sid>/<start, UTC>-<stream sid>.wav``: one object per stream, so a call handed
    over to another instance has two, and they sort in the order they were recorded."""
    return f"{call_sid}/{started.strftime('%Y%m%dT%H%M%S.%f')[:-3]}Z-{stream_sid}.wav"


class Upload(Protocol):
    """Where one recording goes: told of the spool as it grows, then that it is complete."""

    async def grew(self, spool: Path, size: int) -> None: ...

    async def finish(self, spool: Path, size: int) -> str: ...

    async def abandon(self) -> None: ...


class Store(Protocol):
    def upload(self, name: str) -> Upload: ...

    async def list(self, call_sid: str) -> list[str]: ...

    async def read(self, name: str, start: int, end: int | None) -> tuple[AsyncIterator[bytes], int]: ...

    def describe(self) -> str: ...


class Recorder:
    """One stream's recording: the tape on the audio path, a writer task for the rest."""

    def __init__(self, tape: Tape, upload: Upload, spool_dir: Path, label: str) -> None:
        self.tape = tape
        self.upload = upload
        self.label = label
        self.dropped_blocks = 0
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_BLOCKS)
        self._flushed_at = tape.started
        fd, name = tempfile.mkstemp(prefix="telephony-rec-", suffix=".wav", dir=spool_dir)
        os.close(fd)
        self.spool = Path(name)
        self._task = asyncio.get_running_loop().create_task(self._write())

    def tick(self, now: float) -> None:
        if now - self._flushed_at >= FLUSH_S:
            self._flushed_at = now
            self._put(self.tape.take(now))

    def _put(self, block: bytes | None) -> None:
        if block == b"":
            return
        try:
            self._queue.put_nowait(block)
        except asyncio.QueueFull:  # the disk is not keeping up: lose recording, never audio
            self.dropped_blocks += 1

    async def close(self, now: float) -> str | None:
        """The call is over: the rest of the tape, then the recording's final name (or None)."""
        self._put(self.tape.finish(now))
        await self._queue.put(None)
        try:
            return await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error("recording %s: not finished within %g s; left in %s", self.label, CLOSE_TIMEOUT_S,
                      self.spool)
            return None

    async def _write(self) -> str | None:
        size = 0
        try:
            with open(self.spool, "wb") as spool:
                await on_disk(spool.write, wav_header(0))
                while (block := await self._queue.get()) is not None:
                    await on_disk(_append, spool, block)
                    size += len(block)
                    await self.upload.grew(self.spool, HEADER_BYTES + size)
                spool.seek(0)
                await on_disk(_append, spool, wav_header(size))
            if self.dropped_blocks:
                log.warning("recording %s: %d s of audio dropped (the store fell behind)", self.label,
                            self.dropped_blocks)
            if self.tape.late_samples:
                log.info("recording %s: %d caller samples came too late to place", self.label,
                         self.tape.late_samples)
            where = await self.upload.finish(self.spool, HEADER_BYTES + size)
            log.info("recording %s: %.1f s saved to %s", self.label, size / 16000, where)
            return where
        except Exception as exc:  # a recording must never take the call down
            log.error("recording %s: not saved (%s); spool kept at %s", self.label, _describe(exc), self.spool)
            await self.upload.abandon()
            return None


def _append(spool: Any, data: bytes) -> None:
    spool.write(data)
    spool.flush()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# --- A directory ---


@dataclass
class _FileUpload:
    path: Path

    async def grew(self, spool: Path, size: int) -> None:
        pass

    async def finish(self, spool: Path, size: int) -> str:
        await on_disk(self.path.parent.mkdir, parents=True, exist_ok=True)
        await on_disk(os.replace, spool, self.path)  # (same filesystem: a rename)
        return str(self.path)

    async def abandon(self) -> None:
        pass


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"file://{self.root}"

    def spool_dir(self) -> Path:
        """Spooled beside the recordings, so finishing is a rename on the same filesystem."""
        spool = self.root / ".spool"
        spool.mkdir(parents=True, exist_ok=True)
        return spool

    def upload(self, name: str) -> Upload:
        return _FileUpload(self.root / name)

    async def list(self, call_sid: str) -> list[str]:
        folder = self.root / call_sid
        names = await on_disk(lambda: sorted(p.name for p in folder.glob("*.wav")) if folder.is_dir() else [])
        return [f"{call_sid}/{n}" for n in names]

    async def read(self, name: str, start: int, end: int | None) -> tuple[AsyncIterator[bytes], int]:
        path = self.root / name
        size = (await on_disk(path.stat)).st_size

        async def chunks() -> AsyncIterator[bytes]:
            with open(path, "rb") as f:
                f.seek(start)
                left = (end if end is not None else size - 1) - start + 1
                while left > 0:
                    data = await on_disk(f.read, min(left, 64 * 1024))
                    if not data:
                        return
                    left -= len(data)
                    yield data
        return chunks(), size


# --- S3 (or any S3-compatible store) ---


class _S3Upload:
    """A multipart upload fed from the spool: parts 2… as the call goes, part 1 (with the header
    that knows the length) at the end. A recording smaller than one part is one plain PUT."""

    def __init__(self, store: "S3Store", key: str) -> None:
        self.store, self.key = store, key
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._sent = store.part_bytes  # spool bytes uploaded (part 1 is held back: its header changes)

    async def grew(self, spool: Path, size: int) -> None:
        while size - self._sent > self.store.part_bytes:  # (a byte at least is left for the last part)
            await self._part(spool, len(self._parts) + 2, self._sent, self.store.part_bytes)
            self._sent += self.store.part_bytes

    async def _part(self, spool: Path, number: int, offset: int, length: int) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self._upload_id is None:
            made = await self.store.call(client.create_multipart_upload, Bucket=bucket, Key=self.key,
                                         ContentType=MEDIA_TYPE)
            self._upload_id = made["UploadId"]
        body = await on_disk(_read_range, spool, offset, length)
        done = await self.store.call(client.upload_part, Bucket=bucket, Key=self.key, UploadId=self._upload_id,
                                     PartNumber=number, Body=body)
        self._parts.append({"PartNumber": number, "ETag": done["ETag"]})

    async def finish(self, spool: Path, size: int) -> str:
        client, bucket = self.store.client, self.store.bucket
        if self._upload_id is None:  # small: one PUT, streamed from the spool
            with open(spool, "rb") as body:
                await self.store.call(client.put_object, Bucket=bucket, Key=self.key, Body=body,
                                      ContentType=MEDIA_TYPE)
        else:
            await self._part(spool, len(self._parts) + 2, self._sent, size - self._sent)  # the last part
            await self._part(spool, 1, 0, self.store.part_bytes)
            self._parts.sort(key=lambda p: p["PartNumber"])
            await self.store.call(client.complete_multipart_upload, Bucket=bucket, Key=self.key,
                                  UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})
        await on_disk(spool.unlink, missing_ok=True)
        return f"s3://{bucket}/{self.key}"

    async def abandon(self) -> None:
        if self._upload_id is not None:  # the parts already stored would otherwise be billed forever
            try:
                await self.store.call(self.store.client.abort_multipart_upload, Bucket=self.store.bucket,
                                      Key=self.key, UploadId=self._upload_id)
            except Exception as exc:
                log.warning("recording %s: multipart upload not aborted: %s", self.key, _describe(exc))


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class S3Store:
    """``s3://bucket/prefix``; credentials, region and endpoint as the AWS SDKs read them
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``)."""

    def __init__(self, bucket: str, prefix: str, spool: Path, part_bytes: int | None = None) -> None:
        import boto3  # only when recordings go to S3
        from botocore.config import Config

        self.bucket, self.prefix, self._spool = bucket, prefix, spool
        self.part_bytes = part_bytes or S3_PART_BYTES
        self.client = boto3.client("s3", config=Config(connect_timeout=5, read_timeout=30,
                                                       retries={"max_attempts": UPLOAD_TRIES, "mode": "standard"}))

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def spool_dir(self) -> Path:
        self._spool.mkdir(parents=True, exist_ok=True)
        return self._spool

    async def call(self, method: Any, **kwargs: Any) -> Any:
        """A blocking SDK call, in a thread (boto3 retries with backoff itself)."""
        return await on_store(method, **kwargs)

    def upload(self, name: str) -> Upload:
        return _S3Upload(self, self.prefix + name)

    async def list(self, call_sid: str) -> list[str]:
        found = await self.call(self.client.list_objects_v2, Bucket=self.bucket, Prefix=f"{self.prefix}{call_sid}/")
        return sorted(obj["Key"][len(self.prefix):] for obj in found.get("Contents", ())
                      if obj["Key"].endswith(".wav"))

    async def read(self, name: str, start: int, end: int | None) -> tuple[AsyncIterator[bytes], int]:
        byte_range = f"bytes={start}-{'' if end is None else end}"
        got = await self.call(self.client.get_object, Bucket=self.bucket, Key=self.prefix + name, Range=byte_range)
        size = int(got["ContentRange"].rsplit("/", 1)[1]) if got.get("ContentRange") else got["ContentLength"]
        body = got["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while data := await on_store(body.read, 64 * 1024):
                    yield data
            finally:
                body.close()
        return chunks(), size


def open_store(url: str, spool: Path | None = None) -> FileStore | S3Store:
    """RECORDINGS_URL: ``file:///dir`` or ``s3://bucket/prefix``."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise RecordingsError("RECORDINGS_URL file:// needs an absolute path: file:///var/recordings")
        return FileStore(Path(parts.path))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise RecordingsError("RECORDINGS_URL s3:// needs a bucket: s3://bucket/prefix")
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Store(parts.netloc, prefix, spool or Path(tempfile.gettempdir()) / "telephony-recordings")
    raise RecordingsError("RECORDINGS_URL must be file:///dir or s3://bucket/prefix")


class Recordings:
    """The service's recordings: a recorder per stream, when the profile records."""

    def __init__(self, store: FileStore | S3Store) -> None:
        self.store = store

    def start(self, call_sid: str, stream_sid: str, now: float) -> Recorder:
        name = object_name(call_sid, stream_sid, datetime.now(timezone.utc))
        return Recorder(Tape(now), self.store.upload(name), self.store.spool_dir(), f"{call_sid}/{stream_sid}")


# --- GET /calls/{sid}/recording ---

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(first, last) byte of a single-range ``Range`` header; None: the whole; "bad": unsatisfiable."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.groups() == ("", ""):
        return "bad"
    first, last = match.groups()
    if first == "":  # the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else "bad"
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end else "bad"


async def recording_response(store: FileStore | S3Store, call_sid: str, part: int,
                             range_header: str | None) -> Response:
    """The call's ``part``-th recording (1: the first stream; a handed-over call has more), whole or a
    byte range (an <audio> element seeks with them)."""
    parts = await store.list(call_sid)
    if not parts:
        return JSONResponse({"error": f"no recording of call {call_sid}"}, status_code=404)
    if not 1 <= part <= len(parts):
        return JSONResponse({"error": f"call {call_sid} has {len(parts)} recording part(s)"}, status_code=404)
    name = parts[part - 1]
    whole_chunks, size = await store.read(name, 0, 0)  # learns the size (one byte read)
    await whole_chunks.aclose()
    headers = {"Accept-Ranges": "bytes", "X-Recording-Parts": str(len(parts)),
               "Content-Disposition": f'inline; filename="{name.replace("/", "-")}"'}
    wanted = byte_range(range_header, size)
    if wanted == "bad" or (isinstance(wanted, tuple) and wanted[0] >= size):
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
    chunks, _ = await store.read(name, first, last)
    headers["Content-Length"] = str(last - first + 1)
    if wanted is None:
        return StreamingResponse(chunks, media_type=MEDIA_TYPE, headers=headers)
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return StreamingResponse(chunks, status_code=206, media_type=MEDIA_TYPE, headers=headers)
