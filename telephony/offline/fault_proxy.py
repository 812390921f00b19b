"""A TCP fault proxy on loopback: sits in front of one upstream and injects the faults production brings.

``hang``: connections stay open but nothing is forwarded either way (a partition, a hung server);
``reset``: every open connection is closed abruptly (RST, no FIN); ``slow``: each chunk is delayed;
``restart``: open connections are dropped and new ones refused for a while (a server restarting).
Faults come on command (``inject``) or from a schedule (``run_schedule``). Every fault is logged
with its start and end, on the monotonic and the wall clock, so that whoever checks the service's
behaviour afterwards can excuse a silence or an error that an injected fault explains.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

KINDS = ("hang", "reset", "slow", "restart")
CHUNK = 65536


@dataclass
class Fault:
    kind: str
    target: str
    start: float  # time.monotonic()
    end: float
    wall_start: float  # time.time()
    wall_end: float
    delay_s: float = 0.0  # slow: per chunk

    def covers(self, t0: float, t1: float, margin: float = 0.0) -> bool:
        """The fault overlaps [t0, t1] (monotonic), widened by ``margin`` after it ends."""
        return self.start <= t1 and t0 <= self.end + margin


@dataclass(eq=False)  # kept in a set, by identity
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task] = field(default_factory=list)


class FaultProxy:
    """``async with FaultProxy("redis", "127.0.0.1", 6379) as proxy:`` → clients use ``proxy.port``."""

    def __init__(self, target: str, upstream_host: str, upstream_port: int) -> None:
        self.target = target
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.log: list[Fault] = []
        self._pipes: set[_Pipe] = set()
        self._hang_until = 0.0
        self._slow_until, self._slow_delay = 0.0, 0.0
        self._refuse_until = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._unhang = asyncio.Event()
        self._schedule: asyncio.Task | None = None

    async def __aenter__(self) -> FaultProxy:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._schedule is not None:
            self._schedule.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._schedule
        self._unhang.set()
        if self._server is not None:
            self._server.close()
        self._drop_all(abort=True)

    async def _listen(self) -> None:
        sock = None
        if self.port:  # a restart comes back on the same port
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
        self._server = await (asyncio.start_server(self._accept, sock=sock) if sock else
                              asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    # --- faults ---

    def inject(self, kind: str, seconds: float = 0.0, delay_s: float = 0.2) -> Fault:
        """Starts a fault now, lasting ``seconds`` (``reset`` is instantaneous). Returns its log entry."""
        now, wall = time.monotonic(), time.time()
        fault = Fault(kind, self.target, now, now + seconds, wall, wall + seconds,
                      delay_s if kind == "slow" else 0.0)
        if kind == "hang":
            self._hang_until = max(self._hang_until, fault.end)
            self._unhang.clear()
            asyncio.get_running_loop().call_later(seconds, self._unhang.set)
        elif kind == "reset":
            self._drop_all(abort=True)
        elif kind == "slow":
            self._slow_until, self._slow_delay = max(self._slow_until, fault.end), delay_s
        elif kind == "restart":
            self._refuse_until = max(self._refuse_until, fault.end)
            self._drop_all(abort=True)
            asyncio.get_running_loop().create_task(self._restart(seconds))
        else:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(KINDS)}")
        self.log.append(fault)
        return fault

    async def _restart(self, seconds: float) -> None:
        # Closing the listener makes new connections fail with "connection refused", as a
        # restarting server's port does.
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(seconds)
        for _ in range(50):  # the port may linger a moment
            try:
                await self._listen()
                return
            except OSError:
                await asyncio.sleep(0.05)

    def run_schedule(self, schedule: list[tuple[float, str, float]]) -> None:
        """(seconds from now, kind, duration) entries, each injected at its time, in the background."""
        async def run() -> None:
            t0 = time.monotonic()
            for at, kind, seconds in sorted(schedule):
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                self.inject(kind, seconds)
        self._schedule = asyncio.get_running_loop().create_task(run())

    def _drop_all(self, abort: bool) -> None:
        for pipe in list(self._pipes):
            for writer in (pipe.client, pipe.upstream):
                transport = writer.transport
                if abort:
                    with contextlib.suppress(OSError):  # SO_LINGER 0: the peer gets RST, not FIN
                        sock = transport.get_extra_info("socket")
                        if sock is not None:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    transport.abort()
                else:
                    transport.close()
            for task in pipe.tasks:
                task.cancel()
        self._pipes.clear()

    # --- forwarding ---

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (TimeoutError, OSError):
            writer.transport.abort()
            return
        pipe = _Pipe(writer, up_writer)
        self._pipes.add(pipe)
        forward = asyncio.create_task(self._forward(up_reader, writer))
        pipe.tasks.append(forward)
        try:
            await self._forward(reader, up_writer)
            await forward
        except asyncio.CancelledError:
            pass
        finally:
            self._pipes.discard(pipe)
            for w in (writer, up_writer):
                w.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                await self._held()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    async def _held(self) -> None:
        """Holds a chunk while a hang lasts; delays it while ``slow`` lasts."""
        while time.monotonic() < self._hang_until:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._unhang.wait(), max(0.01, self._hang_until - time.monotonic()))
        if time.monotonic() < self._slow_until:
            await asyncio.sleep(self._slow_delay)
