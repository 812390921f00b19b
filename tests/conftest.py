from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest
import uvicorn
from redis_server import redis_server, tls_redis_server  # noqa: F401 (fixtures: a real redis-server)

from telephony.core.profile import Profile, load_profile
from telephony.offline.simulator import TwilioCallSimulator
from telephony.serve.app import create_app
from telephony.serve.direct_lane import DirectWebSocketProtocol
from telephony.serve.server import ws_max_size
from telephony.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def twilio_checks_what_it_receives(monkeypatch):
    """Every simulated call checks each message the bridge sends against Twilio's schemas."""
    from twilio_schemas import validate_to_twilio

    monkeypatch.setattr(TwilioCallSimulator, "default_validate", staticmethod(validate_to_twilio))


@pytest.fixture(autouse=True)
def history_in_a_temporary_file(monkeypatch, tmp_path_factory):
    """Apps built without DATABASE_URL keep their call history in a directory of the test's own,
    not in ./telephony.sqlite3 (the service's default) shared by every test and worker; nor in
    tmp_path, which tests expect to hold only what they wrote."""
    from telephony.history import database

    monkeypatch.setattr(database, "DEFAULT_SQLITE_FILE",
                        str(tmp_path_factory.mktemp("history") / "telephony.sqlite3"))


@pytest.fixture(autouse=True)
def parked_calls_in_a_temporary_directory(monkeypatch, tmp_path_factory):
    """SIP calls a test's app parks without Redis go to a directory of that test's own (the
    service's default is ./telephony-state, which every test and worker would share, and adopt
    each other's calls from). Set in the environment, so a `telephony serve` subprocess gets it too."""
    monkeypatch.setenv("STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def profile() -> Profile:
    return load_profile(ROOT / "config" / "agent.toml")


@contextlib.asynccontextmanager
async def running_app(settings: Settings, profile: Profile | None = None, ws: type | str = DirectWebSocketProtocol,
                      **kwargs):
    """The real app under a real uvicorn server on a free loopback port (``ws``: its websocket
    protocol; "websockets-sansio" is plain ASGI, as under any other server)."""
    app = create_app(settings, profile or load_profile(ROOT / "config" / "agent.toml"), **kwargs)
    try:
        async with serve_app(app, ws_max_size(settings), ws) as host:
            yield app, host
    finally:
        await app.state.tools.aclose()  # what the lifespan does (off here)
        await app.state.shared.close()
        if app.state.history is not None:
            await app.state.history.close()


@contextlib.asynccontextmanager
async def serve_app(app, max_ws_message: int = 1 << 20, ws: type | str = DirectWebSocketProtocol):
    """Any ASGI app under uvicorn on a free loopback port; yields "127.0.0.1:PORT"."""
    # proto=IPPROTO_TCP matters: asyncio only disables Nagle on sockets that say they are TCP, and
    # with Nagle on, a 68-byte `clear` waits for the peer's next ACK (~20 ms here, measured).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws_max_size=max_ws_message,
                            ws=ws)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
