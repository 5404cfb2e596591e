"""Alembic environment: uses the connection facegender hands in, else FACEGENDER_DB_URL."""

import os

from alembic import context
from sqlalchemy import Connection

from worker.db import Base, make_engine

target_metadata = Base.metadata


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _migrate(connection)
else:
    url = os.environ.get("FACEGENDER_DB_URL", "sqlite:///facegender.db")
    with make_engine(url).connect() as fresh:
        _migrate(fresh)
