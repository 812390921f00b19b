"""Call history: every call, its turns and its events, in a database (SQLite by default,
PostgreSQL with DATABASE_URL), written off the audio path and read back by the calls API.

- ``models``: the tables (SQLAlchemy Core); ``migrations/``: Alembic, shipped in the package.
- ``database``: DATABASE_URL → an async engine; the schema migrated in its own thread.
- ``recorder``: one call's records (the core's ``Record`` stream) → rows.
- ``writer``: the queue and the one task that writes rows in batches, retried and bounded.
- ``reader`` / ``api``: the rows back as JSON for ``GET /calls/{sid}`` and ``GET /calls?state=ended``.

May import: ``telephony.settings`` only. Records arrive as plain (kind, data); ``serve`` feeds them
in and mounts the API.
"""
