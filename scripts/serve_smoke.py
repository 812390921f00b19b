"""Starts a command that serves the app (default: `telephony serve`), waits for 200 from /healthz, stops it.

Used by CI to prove an install really serves; exits non-zero with the server's output otherwise.
    python scripts/serve_smoke.py [command ...]      # PORT is chosen here and passed in the environment
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(command: list[str]) -> int:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "REALTIME_URL": "local",
           # No Twilio account here: the service refuses to serve unsigned webhooks unless told so.
           "TWILIO_VALIDATE_SIGNATURES": os.environ.get("TWILIO_VALIDATE_SIGNATURES", "false")}
    server = subprocess.Popen(command or ["telephony", "serve"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ok = False
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    print(f"/healthz on port {port}: {response.status} {response.read().decode()}")
                    ok = response.status == 200
                    return 0 if ok else 1
            except OSError:
                time.sleep(0.2)
        print(f"no 200 from /healthz (server exit code {server.poll()})", file=sys.stderr)
        return 1
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            output, _ = server.communicate()
        if not ok:
            print(output, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
