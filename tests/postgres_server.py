"""A real PostgreSQL (Debian's `postgresql` package) in a throwaway cluster on a free loopback
port, for the call-history tests: started per test, stoppable and restartable mid-call.

Skipped when the binaries are absent, unless REQUIRE_POSTGRES=1 (CI sets it: there it must run).
PostgreSQL refuses to run as root: as root, the cluster is made and run by the `postgres` user
(the package creates it) through runuser."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest
from helpers import free_port

USER = "telephony"
PASSWORD = "pg-test-password-5150"  # scram over TCP: the tests check it never reaches a log line


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(pg_ctl) if pg_ctl else None


class PostgresServer:
    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            if os.environ.get("REQUIRE_POSTGRES") == "1":
                pytest.fail("PostgreSQL is not installed (REQUIRE_POSTGRES=1): apt-get install postgresql")
            pytest.skip("PostgreSQL is not installed")
        self.bindir = bindir
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="postgres-test-")
        self.data = os.path.join(self.dir, "data")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        password_file = os.path.join(self.dir, "password")
        with open(password_file, "w") as f:
            f.write(PASSWORD)
        if self.as_user:
            os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)
        self._run("initdb", "-D", self.data, "-U", USER, f"--pwfile={password_file}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, os.path.join(self.bindir, tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir)

    def url(self, scheme: str = "postgresql") -> str:
        return f"{scheme}://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
                   "-c full_page_writes=off")  # an immediate stop is a crash; the OS keeps what was written
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.dir, "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``immediate``: as a crash (connections cut, no shutdown checkpoint)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return subprocess.run([*self.as_user, os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "status"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir).returncode == 0


@pytest.fixture
def postgres_server():
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        if server.running():
            server.stop("immediate")
        shutil.rmtree(server.dir, ignore_errors=True)
