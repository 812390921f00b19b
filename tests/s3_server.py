"""A real S3 API on a free loopback port: moto's server mode, in its own process.

Its smallest multipart part is lowered (S3_UPLOAD_PART_MIN_SIZE) so a short call's recording can
be uploaded in several parts, as a long one is against the real service (5 MiB)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import httpx
from helpers import free_port

PART_MIN_BYTES = 16 * 1024


@contextlib.contextmanager
def s3_server():
    port = free_port()
    env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": str(PART_MIN_BYTES)}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/moto-api/", timeout=0.5)
            break
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto's S3 server did not start"
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
