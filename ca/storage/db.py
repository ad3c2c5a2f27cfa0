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

Every wait for the database is bounded by ``timeout`` (``[database]
timeout``, default 2 s): SQLite's busy timeout, the wait for the write turn,
PostgreSQL's lock_timeout and connect_timeout. A database that does not
answer in that time fails the transaction (the server answers 503 with
Retry-After) instead of holding the request.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from idmint.ca.errors import DatabaseBusy

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATIONS = Path(__file__).parent / "migrations"

#: Seconds any one wait for the database may take, unless configured.
DEFAULT_TIMEOUT = 2.0


def _sqlite_pragmas(timeout: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return on_connect


def make_engine(url: str, timeout: float = DEFAULT_TIMEOUT) -> Engine:
    """An engine for ``url`` with idmint's per-dialect settings."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout})
        event.listen(engine, "connect", _sqlite_pragmas(timeout))
        return engine
    if url.startswith("postgresql+psycopg") or url.startswith("postgresql:"):
        milliseconds = int(timeout * 1000)
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_timeout=timeout,
            connect_args={
                "connect_timeout": max(1, round(timeout)),
                "options": f"-c lock_timeout={milliseconds}",
            },
        )
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    # alembic (with mako and pygments) is imported only to migrate: the writer
    # and its standby, each its own interpreter, never do (measured: 65.5
    # instead of 70.0 MB RSS each).
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (a SQLite file: mode 0600)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        database = Path(url[len("sqlite:///") :])
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            if path.exists():
                path.chmod(0o600)


class Database:
    """An engine and a session factory for one database URL."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self.engine = make_engine(url, timeout)
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
        #: Of the write turn's timeout, what was left once it was taken: the
        #: transaction's own waits (SQLite's busy handler) get only that, so
        #: one transaction never waits more than the timeout in all.
        self._left: float | None = None

    @contextmanager
    def _serialised(self, timeout: float | None = None) -> Iterator[None]:
        """Hold this database's write turn (SQLite only): threads, then processes."""
        if self._lock is None:
            yield
            return
        wait = self.timeout if timeout is None else timeout
        started = time.monotonic()
        if not self._lock.acquire(timeout=wait):
            raise DatabaseBusy(f"the database's write turn was not free within {wait:g} s")
        try:
            self._depth += 1
            try:
                if self._depth == 1:
                    self._lock_across_processes(max(wait - (time.monotonic() - started), 0.0))
                    self._left = wait - (time.monotonic() - started)
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._left = None
                    self._unlock_across_processes()
        finally:
            self._lock.release()

    @contextmanager
    def session(self, timeout: float | None = None) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        ``timeout``: how long this transaction may wait for the database in
        all (write turn and locks; default: the configured timeout).
        """
        with self._serialised(timeout), self._sessions() as session, session.begin():
            limit = self._waits(timeout)
            if limit is None:
                yield session
                return
            raw = session.connection().connection
            self._limit_waits(raw, limit)
            try:
                yield session
                session.flush()  # the writes wait under the limit, not after it
            finally:
                self._limit_waits(raw, None)

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
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """A Core connection in one transaction, for hot paths that skip the ORM.

        ``timeout``: how long this transaction may wait for the database
        (default: the configured timeout).
        """
        with self._serialised(timeout), self.engine.begin() as connection:
            limit = self._waits(timeout)
            if limit is not None:
                self._limit_waits(connection.connection, limit)
            try:
                yield connection
            finally:
                if limit is not None:
                    self._limit_waits(connection.connection, None)

    def _waits(self, timeout: float | None) -> float | None:
        """The wait limit for this transaction, None if the configured one stands."""
        left = self._left
        if left is not None and left < (self.timeout if timeout is None else timeout) - 0.01:
            return max(left, 0.01)  # the write turn took part of it
        return timeout

    @contextmanager
    def cursor(self, timeout: float | None = None) -> Iterator[Any]:
        """A driver (DB-API) cursor in one transaction, in the write turn.

        For the hottest single statement (spending a join token): SQLAlchemy's
        Core wrappers around it cost ~40 us against ~10 us for the statement.
        Write SQL for it with :func:`driver_sql`.
        """
        with self._serialised(timeout):
            connection = self.engine.raw_connection()
            limit = self._waits(timeout)
            try:
                if limit is not None:
                    self._limit_waits(connection, limit)
                cursor = connection.cursor()
                try:
                    yield cursor
                    connection.commit()
                except BaseException:
                    connection.rollback()
                    raise
                finally:
                    cursor.close()
                    if limit is not None:
                        self._limit_waits(connection, None)
            finally:
                connection.close()  # back to the pool

    def _limit_waits(self, dbapi_connection: Any, timeout: float | None) -> None:
        """Set (or, with None, restore) how long this connection waits for locks."""
        milliseconds = int((self.timeout if timeout is None else timeout) * 1000)
        cursor = dbapi_connection.cursor()
        try:
            if self.engine.dialect.name == "sqlite":
                cursor.execute(f"PRAGMA busy_timeout={milliseconds}")
            elif self.engine.dialect.name == "postgresql":
                cursor.execute(f"SET lock_timeout = {milliseconds}")
        finally:
            cursor.close()

    def _lock_across_processes(self, timeout: float) -> None:
        if self._lock_path is None:
            return
        pid = os.getpid()
        if self._lock_file is None or self._lock_file[0] != pid:
            # A descriptor inherited over fork() shares its lock with the
            # parent, so each process opens its own.
            descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._lock_file = (pid, descriptor)
        # flock has no timeout: try, then poll. Only the writer process and
        # the CLI write here (workers send their writes to the writer), so
        # the turn is rarely taken and the first try nearly always wins.
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while True:
            try:
                fcntl.flock(self._lock_file[1], fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DatabaseBusy(
                        f"another process held the database's write turn ({self._lock_path}) "
                        f"for over {timeout:g} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.01)

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
