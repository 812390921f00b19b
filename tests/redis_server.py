"""A real redis-server on a free loopback port, for the shared-state and handoff tests.

Skipped when the binary is absent, unless REQUIRE_REDIS=1 (CI sets it: there it must run)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from helpers import free_port


class RedisServer:
    def __init__(self, tls: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("REQUIRE_REDIS") == "1":
                pytest.fail("redis-server is not installed (REQUIRE_REDIS=1)")
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-test-")
        self.proc: subprocess.Popen | None = None
        self.tls = tls
        if tls:  # a self-signed certificate, as Heroku Key-Value Store presents
            if shutil.which("openssl") is None:
                pytest.skip("openssl is not installed")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=kv.example.com", "-keyout", f"{self.dir}/key.pem",
                            "-out", f"{self.dir}/cert.pem"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        ports = (["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", f"{self.dir}/cert.pem",
                  "--tls-key-file", f"{self.dir}/key.pem", "--tls-auth-clients", "no"] if self.tls
                 else ["--port", str(self.port)])
        self.proc = subprocess.Popen(
            [self.binary, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.tls:  # up when it accepts connections (a TLS handshake is the client's business)
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def redis_server():
    yield from _running(RedisServer())


@pytest.fixture
def tls_redis_server():
    yield from _running(RedisServer(tls=True))


def _running(server: RedisServer):
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
