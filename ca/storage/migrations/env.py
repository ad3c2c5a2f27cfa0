"""Alembic environment: runs migrations on the URL idmint passes in."""

from __future__ import annotations

from alembic import context

from idmint.ca.storage.db import make_engine
from idmint.ca.storage.models import Base

url = context.config.get_main_option("sqlalchemy.url")
assert url is not None
engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
