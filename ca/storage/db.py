"""Engines, sessions and migrations.

SQLite runs in WAL mode with a busy timeout so that several processes on one
host (server workers, the CLI) can share the file; PostgreSQL needs nothing
special here.

Why idmint serialises SQLite transactions itself: SQLite makes a writer that
finds the file locked sleep in its busy handler, in steps of 1, 2, 5, 10 ms
and more, however soon the lock is free again. With two server workers each
writing a few hundred times a second that sleeping, not work, set the
pace (measured: two workers served fewer JWT-SVIDs than one). Threads of a
process queue on a lock, processes on ``flock`` of a file beside the
database; the kernel wakes the next waiter the moment the lock is released.
The busy timeout stays as the fallback for anything that does not take part.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with idmint's per-dialect settings."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema."""
    command.upgrade(alembic_config(url), "head")


class Database:
    """An engine and a session factory for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time and makes the others wait in its
        # busy handler, which sleeps in steps of milliseconds; queueing the
        # threads of this process on a lock instead cut the latency of a
        # join-token attestation from ~0.6 ms to the ~25 us SQLite needs.
        self._lock: threading.RLock | None = threading.RLock() if url.startswith("sqlite") else None
        database = self.engine.url.database
        self._lock_path = (
            f"{database}.lock"
            if url.startswith("sqlite") and database and database != ":memory:"
            else None
        )
        self._lock_file: tuple[int, int] | None = None  # (pid, fd): flock is per process
        self._depth = 0

    @contextmanager
    def _serialised(self) -> Iterator[None]:
        """Hold this database's write turn (SQLite only): threads, then processes."""
        if self._lock is None:
            yield
            return
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1:
                    self._lock_across_processes()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._unlock_across_processes()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._serialised(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session that only reads: it does not wait for the write turn.

        SQLite in WAL mode lets readers run beside the writer, so a long
        read (a CRL of 100,000 serials, ``idmint audit verify``) holds no
        issuance up in any process. Writing through it falls back to
        SQLite's busy handler: use :meth:`session` for writes.
        """
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A Core connection in one transaction, for hot paths that skip the ORM."""
        with self._serialised(), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        """A driver (DB-API) cursor in one transaction, in the write turn.

        For the hottest single statement (spending a join token): SQLAlchemy's
        Core wrappers around it cost ~40 us against ~10 us for the statement.
        Write SQL for it with :func:`driver_sql`.
        """
        with self._serialised():
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                try:
                    yield cursor
                    connection.commit()
                except BaseException:
                    connection.rollback()
                    raise
                finally:
                    cursor.close()
            finally:
                connection.close()  # back to the pool

    def _lock_across_processes(self) -> None:
        if self._lock_path is None:
            return
        pid = os.getpid()
        if self._lock_file is None or self._lock_file[0] != pid:
            # A descriptor inherited over fork() shares its lock with the
            # parent, so each process opens its own.
            descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._lock_file = (pid, descriptor)
        fcntl.flock(self._lock_file[1], fcntl.LOCK_EX)

    def _unlock_across_processes(self) -> None:
        if self._lock_file is not None and self._lock_file[0] == os.getpid():
            fcntl.flock(self._lock_file[1], fcntl.LOCK_UN)

    def close(self) -> None:
        if self._lock_file is not None and self._lock_file[0] == os.getpid():
            os.close(self._lock_file[1])
            self._lock_file = None
        self.engine.dispose()


def bulk_insert(
    session: Session | Connection, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """INSERT many rows as multi-row VALUES statements, skipping per-value processing.

    Only for the hot write path (issuance records): values must already be
    in driver form; use :func:`time_binder` for datetimes.

    Why not executemany: SQLite's driver releases the GIL around every row's
    step and must win it back each time, and the thread issuing SVIDs holds
    it in between; one statement per chunk of rows is one hand-over.
    """
    if not rows:
        return
    connection = session if isinstance(session, Connection) else session.connection()
    marker = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    row_markers = f"({', '.join(marker for _ in columns)})"
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    # SQLite takes at most 32,766 parameters per statement (999 before 3.32).
    step = max(1, 900 // len(columns))
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        values = [value for row in chunk for value in row]
        connection.exec_driver_sql(head + ", ".join(row_markers for _ in chunk), tuple(values))


def driver_sql(connection: Connection | Engine, sql: str) -> str:
    """``sql`` written with ``?`` placeholders, in this driver's paramstyle."""
    return sql if connection.dialect.paramstyle == "qmark" else sql.replace("?", "%s")


def _sqlite_time(moment: datetime) -> str:
    # isoformat is the same text as strftime("%Y-%m-%d %H:%M:%S.%f"), at a
    # fifth of the cost (three per issuance record); a UTC time needs no
    # conversion, only its "+00:00" cut off.
    if moment.tzinfo is UTC:
        return moment.isoformat(" ", "microseconds")[:26]
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def time_binder(session: Session | Connection | Engine) -> Callable[[datetime], Any]:
    """Converts UTC datetimes to what this session's driver stores.

    SQLite gets the naive UTC text SQLAlchemy itself writes for DateTime
    columns, so rows written either way read back the same.
    """
    dialect = session.get_bind().dialect if isinstance(session, Session) else session.dialect
    if dialect.name == "sqlite":
        return _sqlite_time
    return lambda moment: moment.astimezone(UTC)
