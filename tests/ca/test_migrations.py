"""Migrations: the models match them, and upgrades keep the audit chain intact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select

from idmint.ca.storage import audit
from idmint.ca.storage.db import Database, alembic_config
from idmint.ca.storage.models import AuditEvent, Base


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'idmint.db'}"
        return
    from tests.pg import fresh_database

    with fresh_database(request.getfixturevalue("pg_server")) as url:
        yield url


def test_the_models_match_the_migrations(database: Database) -> None:
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_upgrading_past_0005_keeps_the_audit_chain(empty_url: str) -> None:
    config = alembic_config(empty_url)
    command.upgrade(config, "0004")
    database = Database(empty_url)
    try:
        with database.session() as session:
            for n in range(3):
                audit.append(session, [audit.Event("test.event", f"subject-{n}", detail={"n": n})])
        command.upgrade(config, "head")
        with database.reading() as session:
            assert audit.verify_database(session).events == 3
            assert len(session.scalars(select(AuditEvent.seq)).all()) == 3
        uniques = inspect(database.engine).get_unique_constraints("audit_events")
        assert uniques == []  # the hashes are no longer indexed
        # And back: the old schema takes the same rows.
        command.downgrade(config, "0004")
        database.engine.dispose()
        assert len(inspect(database.engine).get_unique_constraints("audit_events")) == 2
        with database.reading() as session:
            assert audit.verify_database(session).events == 3
    finally:
        database.close()
