"""WEB_CONCURRENCY > 1: a small supervisor whose workers each drain on SIGTERM as one process does.

uvicorn's own supervisor builds each worker's server itself, a plain ``uvicorn.Server``, which on
SIGTERM closes every websocket at once (1012): callers cut off mid-sentence on every deploy. Here
each worker is a ``GracefulServer`` around its own app, on the listening socket the supervisor
made. On SIGTERM (Heroku sends it to every process of the dyno; the supervisor forwards it too)
each worker answers new calls busy, lets calls run on for up to SHUTDOWN_GRACE_SECONDS, then ends
the rest; the supervisor waits for them, bounded, and exits. A worker that dies is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time

log = logging.getLogger("telephony.workers")

STOP_MARGIN_S = 3.0  # past the grace: time for the last calls to close and the worker to exit
RESTART_PAUSE_S = 1.0  # between replacing workers that die, so a crash loop does not spin
CONFIGURATION_ERROR = 3  # a worker's exit code when its app cannot be built: no use restarting it


def serve_worker(options: dict, sock: socket.socket) -> None:
    """One worker process: its own app from the environment, served until told to stop, drained."""
    import uvicorn

    from telephony.core.profile import ProfileError
    from telephony.ops import logs
    from telephony.serve.app import create_app
    from telephony.serve.security import redact
    from telephony.serve.server import GracefulServer, http_protocol
    from telephony.settings import Settings, SettingsError

    settings = None
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, settings.log_format, secrets=settings.secrets())
        app = create_app(settings)
        http_protocol(settings)  # this worker's request deadline (the class arrives pickled, by name)
    except (SettingsError, ProfileError) as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        sys.exit(CONFIGURATION_ERROR)
    except Exception as exc:  # noqa: BLE001 - anything else that stops the app being built is no better on retry
        secrets = settings.secrets() if settings is not None else []  # an error may quote one
        print(f"telephony: configuration error: the app cannot be built: {type(exc).__name__}: "
              f"{redact(str(exc), secrets)}", file=sys.stderr)
        sys.exit(CONFIGURATION_ERROR)
    server = GracefulServer(uvicorn.Config(app, **options), app.state.calls, settings.shutdown_grace_seconds)
    server.run(sockets=[sock])


def share_stream_key(settings) -> None:
    """Every worker must verify the stream URLs and tokens any worker signed: a webhook answered by
    one worker opens its stream on another. Without STREAM_SECRET or TWILIO_AUTH_TOKEN to derive
    it from, each worker would draw its own key (two calls in three refused with two workers), so
    the supervisor draws one and hands it to all of them through the environment they inherit."""
    if settings.stream_secret or settings.twilio_auth_token:
        return
    import secrets

    os.environ["STREAM_SECRET"] = secrets.token_hex(32)
    log.warning("neither STREAM_SECRET nor TWILIO_AUTH_TOKEN is set: the workers share a random stream "
                "key for this run; with more than one instance set STREAM_SECRET")


class Supervisor:
    def __init__(self, workers: int, options: dict, sock: socket.socket, grace_s: float) -> None:
        self.count = workers
        self.options = options
        self.sock = sock
        self.stop_timeout_s = grace_s + STOP_MARGIN_S
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop
        self._workers: list[multiprocessing.process.BaseProcess] = []
        self._signals: list[int] = []
        self._wake = threading.Event()

    def run(self) -> int:
        """Serves until SIGTERM or SIGINT, then drains; 2 when the workers cannot start."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        log.info("supervisor [%d]: starting %d workers", os.getpid(), self.count)
        self._workers = [self._start() for _ in range(self.count)]
        while not self._signals:
            self._wake.wait(0.5)
            if not self._signals and not self._replace_dead():
                self._forward(signal.SIGTERM)
                self._stop()
                return 2
        # The first signal asks the workers to drain, always as SIGTERM: a Ctrl-C in a terminal has
        # already sent SIGINT to every worker (the whole process group), and uvicorn takes a second
        # SIGINT as "force exit", which would cut every call. A SIGTERM after a SIGINT only repeats
        # "drain"; a worker that got nothing (a `kill -INT` of the supervisor alone) starts draining.
        self._forward(signal.SIGTERM)
        self._stop()
        return 0

    def _on_signal(self, sig: int, frame) -> None:
        if self._signals:  # a second signal (a second Ctrl-C): pass it on, the workers cut the drain short
            self._forward(sig)
        self._signals.append(sig)
        self._wake.set()

    def _start(self) -> multiprocessing.process.BaseProcess:
        worker = self._context.Process(target=serve_worker, args=(self.options, self.sock), daemon=False)
        worker.start()
        return worker

    def _replace_dead(self) -> bool:
        """Replaces workers that died; False when one cannot start (its configuration is wrong)."""
        for i, worker in enumerate(self._workers):
            if worker.exitcode == CONFIGURATION_ERROR:
                log.error("worker [%s] cannot start: the configuration is wrong; stopping", worker.pid)
                return False
            if not worker.is_alive():
                log.error("worker [%s] exited (code %s); starting another", worker.pid, worker.exitcode)
                time.sleep(RESTART_PAUSE_S)
                self._workers[i] = self._start()
        return True

    def _forward(self, sig: int) -> None:
        for worker in self._workers:
            if worker.is_alive():
                os.kill(worker.pid, sig)

    def _stop(self) -> None:
        log.info("supervisor: waiting up to %g s for %d workers to drain", self.stop_timeout_s, len(self._workers))
        deadline = time.monotonic() + self.stop_timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            if worker.is_alive():
                log.error("worker [%d] did not stop in time; killed", worker.pid)
                worker.kill()
                worker.join()
        log.info("supervisor: stopped")
