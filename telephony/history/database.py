"""DATABASE_URL → an async SQLAlchemy engine, and the schema brought up to date (Alembic).

No URL: SQLite in ``telephony.sqlite3`` in the working directory. ``sqlite:///path`` chooses the
file; ``postgresql://…`` or Heroku's ``postgres://…`` is PostgreSQL through asyncpg.

Migrations run in a thread with its own event loop: Alembic is synchronous Python, and on the
service's loop its work would sit between audio frames.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:  # SQLAlchemy is imported with the first row, not with the settings
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("telephony.history")

DEFAULT_SQLITE_FILE = "telephony.sqlite3"  # in the working directory (tests point it elsewhere)
MIGRATIONS = "telephony.history:migrations"
CONNECT_TIMEOUT_S = 5.0
SQLITE_BUSY_TIMEOUT_MS = 2000  # a lock held elsewhere: wait this long, then the write is retried later
MIGRATION_TIMEOUT_S = 30.0  # a database that hangs must not hold the migration lock for ever
POSTGRES_ADVISORY_LOCK = 0x7e1e_ca11  # one migration at a time across instances starting together


class DatabaseUrlError(ValueError):
    """DATABASE_URL is not one we can use; the message never holds the URL (it has a password)."""


@dataclass(frozen=True)
class Database:
    """Where the history lives: the SQLAlchemy URL (async driver) and how to connect."""

    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def describe(self) -> str:
        """For log lines: the kind and where, never the credentials."""
        if self.is_sqlite:
            return f"SQLite {self.url.split(':///', 1)[1]}"
        parts = urlsplit(self.url)
        return f"PostgreSQL {parts.hostname}:{parts.port or 5432}{parts.path}"

    def engine(self, **options: Any) -> "AsyncEngine":
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import create_async_engine

        if self.is_sqlite:
            engine = create_async_engine(self.url, connect_args=self.connect_args, **options)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            return engine
        options.setdefault("pool_pre_ping", True)  # a restarted server: reconnect, not fail a batch
        return create_async_engine(self.url, connect_args=self.connect_args, **options)


def _sqlite_pragmas(connection, _record) -> None:
    # WAL: the API's reads never wait for the writer, nor it for them. busy_timeout: a lock held
    # by another process is waited for (in aiosqlite's thread), not failed at once.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL's recommended pairing: durable at each checkpoint
    cursor.close()


def database_for(url: str) -> Database:
    """DATABASE_URL's value ("" for the default) as a Database; DatabaseUrlError says what is wrong."""
    if not url:
        return Database(f"sqlite+aiosqlite:///{Path(DEFAULT_SQLITE_FILE).resolve()}")
    scheme, _, rest = url.partition("://")
    if not rest:
        raise DatabaseUrlError("must be a URL: sqlite:///path, postgresql://… or postgres://…")
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        path = rest[1:] if rest.startswith("/") else ""
        if not path or path.startswith(":memory:"):
            raise DatabaseUrlError("sqlite:///path needs a file path (sqlite:///calls.db, or "
                                   "sqlite:////abs/calls.db); an in-memory database would lose the history")
        return Database(f"sqlite+aiosqlite:///{path}")
    if scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        parts = urlsplit(f"postgresql+asyncpg://{rest}")
        if not parts.hostname and "host=" not in parts.query:
            raise DatabaseUrlError("a PostgreSQL URL needs a host: postgresql://user:password@host/dbname")
        # libpq's sslmode (Heroku's and most providers' URLs) is asyncpg's ssl argument.
        query = dict(parse_qsl(parts.query))
        connect_args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT_S}
        if "sslmode" in query:
            connect_args["ssl"] = query.pop("sslmode")
        return Database(urlunsplit(parts._replace(query=urlencode(query))), connect_args)
    raise DatabaseUrlError(f"scheme {scheme!r} is not supported: use sqlite:///path, postgresql://… or postgres://…")


def url_password(url: str) -> str:
    """The password in a database URL ("" if none): kept out of logs beside the whole URL."""
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


# --- The schema ---

def _upgrade(connection, is_postgres: bool) -> None:
    from alembic import command
    from alembic.config import Config

    if is_postgres:
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({POSTGRES_ADVISORY_LOCK})")
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def _migrate(database: Database) -> None:
    from sqlalchemy.pool import NullPool

    engine = database.engine(poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade, not database.is_sqlite)
    finally:
        await engine.dispose()


async def schema_is_current(engine: "AsyncEngine") -> bool:
    """The schema is at SCHEMA_REVISION already: the usual case, checked without loading Alembic
    (~9 MB per process)."""
    from sqlalchemy import text

    from telephony.history.models import SCHEMA_REVISION

    try:
        async with engine.connect() as connection:
            found = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except Exception:  # noqa: BLE001 - no such table yet (or no database): migrate() says which
        return False
    return found == SCHEMA_REVISION


_ONE_MIGRATION = threading.Lock()  # two apps of one process (tests, a supervisor) migrate in turn


async def _bring_up_to_date(database: Database) -> None:
    from sqlalchemy.pool import NullPool

    engine = database.engine(poolclass=NullPool)
    try:
        current = await schema_is_current(engine)
    finally:
        await engine.dispose()
    if not current:  # Alembic (~9 MB once imported) only when there is something to do
        await _migrate(database)


def ensure_schema(database: Database, timeout_s: float = MIGRATION_TIMEOUT_S) -> None:
    """The schema at the latest revision, made or upgraded in the calling thread (with its own
    event loop, never a service's); raises what the database raised."""
    if database.is_sqlite:
        Path(database.url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    with _ONE_MIGRATION:
        asyncio.run(asyncio.wait_for(_bring_up_to_date(database), timeout_s))


def ensure_schema_in_background(database: Database) -> "concurrent.futures.Future[None]":
    """``ensure_schema`` in a daemon thread: an app starts it when it is built, so its first call
    finds the schema ready, and a database that hangs keeps no executor from shutting down."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        if not done.set_running_or_notify_cancel():  # a running one cannot be cancelled by a waiter's timeout
            return
        try:
            ensure_schema(database)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
            done.set_exception(exc)
        else:
            done.set_result(None)

    threading.Thread(target=run, name="call history schema", daemon=True).start()
    return done


def migrate_at_start(database: Database, timeout_s: float = 10.0) -> bool:
    """`telephony serve`, before its workers start: the schema once, not once per worker. A
    database that is down does not stop the service (calls need none): the writers try again."""
    try:
        ensure_schema(database, timeout_s)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure: the writers retry it
        log.warning("call history: the database (%s) could not be migrated at start (%s); calls go on, "
                    "and history writes are retried", database.describe(), describe_error(exc))
        return False


def describe_error(exc: BaseException) -> str:
    """An error in a log line: its kind and the driver's own first line, never SQLAlchemy's text
    (which quotes the statement and its parameters: what callers said)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).splitlines()[0][:200] if str(orig) else ""
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__
