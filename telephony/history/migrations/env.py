"""Alembic's environment: run by ``telephony.history.database`` with a connection in hand
(``config.attributes["connection"]``); there is no alembic.ini to read."""

from __future__ import annotations

from alembic import context

from telephony.history.models import metadata


def run_migrations() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copying
    with context.begin_transaction():
        context.run_migrations()


# Alembic runs this file as a script with its context set up; imported otherwise (the layout
# test imports every module), it only defines the function above.
if hasattr(context, "config"):
    run_migrations()
