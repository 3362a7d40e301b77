"""Alembic environment: runs migrations on the connection handed over by db.migrate."""

from __future__ import annotations

from alembic import context

from db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # plain `alembic` CLI use: build an engine from the URL
        from db.engine import Database

        database = Database(config.get_main_option("sqlalchemy.url"))
        with database.engine.connect() as conn:
            _run(conn)
        database.dispose()
    else:
        _run(connection)


def _run(connection) -> None:  # noqa: ANN001
    # Batch mode lets later migrations ALTER tables on SQLite (copy-and-move under the hood).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
