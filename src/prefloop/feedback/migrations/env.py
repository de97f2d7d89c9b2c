"""Alembic environment: migrations run from the package (no alembic.ini), on the connection
that `PreferenceStore.upgrade()` passes in `config.attributes["connection"]`."""

from __future__ import annotations

from alembic import context

from prefloop.feedback.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through PreferenceStore.upgrade()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER TABLE needs batches
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
