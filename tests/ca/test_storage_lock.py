"""SQLite write turns: processes and threads take turns, nested sessions work."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from idmint.ca.storage.db import Database, migrate


def _hold_turn(database: Database, entered: object, release: object) -> None:
    # The parent's own Database object, inherited over fork() as gunicorn's
    # workers would inherit one made before forking.
    with database.session() as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS marks (who TEXT)"))
        session.execute(text("INSERT INTO marks VALUES ('child')"))
        entered.set()  # type: ignore[attr-defined]
        release.wait(30)  # type: ignore[attr-defined]


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'idmint.db'}"
    migrate(url)
    made = Database(url)
    yield made
    made.close()


def test_a_forked_process_and_its_parent_take_turns(database: Database) -> None:
    parent = database
    with parent.session() as session:  # opens the parent's lock file before the fork
        session.execute(text("SELECT 1"))
    context = multiprocessing.get_context("fork")
    entered, release = context.Event(), context.Event()
    child = context.Process(target=_hold_turn, args=(parent, entered, release))
    child.start()
    assert entered.wait(30)
    order: list[str] = []

    def parent_writes() -> None:
        with parent.session() as session:
            # Our turn comes only after the child committed: its row is there.
            order.append(str(session.execute(text("SELECT who FROM marks")).scalar()))
            session.execute(text("INSERT INTO marks VALUES ('parent')"))

    writer = threading.Thread(target=parent_writes)
    writer.start()
    writer.join(0.3)
    assert writer.is_alive(), "the parent wrote while the child held the turn"
    release.set()
    writer.join(30)
    child.join(30)
    assert child.exitcode == 0
    assert order == ["child"]


def test_sessions_nest_in_one_thread_and_release_the_turn(database: Database) -> None:
    with database.session() as outer:
        outer.execute(text("SELECT 1"))
        with database.connection() as inner:
            inner.execute(text("SELECT 1"))
    # Released: another process gets the turn at once.
    context = multiprocessing.get_context("fork")
    entered, release = context.Event(), context.Event()
    release.set()
    child = context.Process(target=_hold_turn, args=(database, entered, release))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and entered.is_set()


def test_readers_do_not_wait_for_the_write_turn(database: Database) -> None:
    with database.session() as session:
        session.execute(text("CREATE TABLE marks (who TEXT)"))
        session.execute(text("INSERT INTO marks VALUES ('before')"))
    context = multiprocessing.get_context("fork")
    entered, release = context.Event(), context.Event()
    child = context.Process(target=_hold_turn, args=(database, entered, release))
    child.start()
    assert entered.wait(30)
    try:
        seen: list[str] = []

        def read() -> None:
            with database.reading() as session:
                seen.extend(
                    str(w) for w in session.execute(text("SELECT who FROM marks")).scalars()
                )

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(10)
        # Read while the other process still holds its turn: the snapshot
        # before its uncommitted row.
        assert not reader.is_alive() and seen == ["before"]
    finally:
        release.set()
        child.join(30)
    assert child.exitcode == 0
