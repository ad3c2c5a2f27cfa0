"""Recording issued credentials and their audit events off the hot path.

An issuance costs one HSM signature (~75 µs on SoftHSM); a database commit
per issuance would cost more than that. The recorder buffers each
issuance's row and audit events, and a background thread writes them every
20 ms in one transaction (group commit). ``flush()`` waits until
everything recorded so far is committed; ``close()`` flushes. The buffer is
bounded, so a database that falls behind slows issuance down instead of
growing memory.

Why 20 ms: a transaction costs ~0.2-0.3 ms however few rows it holds, and
each row ~50 us; at 5 ms the fixed part was most of the recorder's time
(benchmarks/http.py).

Why a buffer swapped on a timer rather than a queue: a queue wakes the
writer thread on every item, and on CPython each wake-up fights the issuing
threads for the GIL; measured, that doubled the cost of a JWT-SVID.

What is at stake if the process dies before a flush: the records of the
credentials issued in the last 20 ms. Those credentials are
still short-lived and revocable by serial or jti (the CRL and denylist need
no issuance record). Admin changes and revocations never go through here:
they commit synchronously, in the same transaction as their audit event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Connection

from idmint.ca.storage import audit
from idmint.ca.storage.db import Database, bulk_insert, time_binder

log = logging.getLogger(__name__)

_CREDENTIAL_COLUMNS = (
    "kind",
    "identifier",
    "spiffe_id",
    "entry_id",
    "authority_id",
    "issued_at",
    "not_after",
)
_Item = tuple[dict[str, Any] | None, Sequence[audit.Event]]


class RecordSink(Protocol):
    """Where issuance records go: a :class:`Recorder`, or the server's writer process."""

    def record(self, credential: dict[str, Any] | None, events: Sequence[audit.Event]) -> None: ...

    def flush(self, timeout: float = 30.0) -> None: ...

    def close(self) -> None: ...


class Recorder:
    """Write-behind of issuance records with group commit."""

    def __init__(
        self,
        database: Database,
        interval: float = 0.02,
        max_buffer: int = 50_000,
    ) -> None:
        self.database = database
        self.interval = interval
        self.max_buffer = max_buffer
        self._buffer: list[_Item] = []
        self._lock = threading.Lock()
        self._done = threading.Condition()
        self._recorded = 0  # items handed to record()
        self._written = 0  # items committed (or given up on)
        self._failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idmint-recorder", daemon=True)
        self._thread.start()

    @property
    def failures(self) -> int:
        """Batches that could not be written (each was retried first)."""
        return self._failures

    def record(self, credential: dict[str, Any] | None, events: Sequence[audit.Event]) -> None:
        """Buffer one credential row (IssuedCredential columns) and its audit events."""
        while len(self._buffer) >= self.max_buffer and self._thread.is_alive():
            time.sleep(self.interval)  # back-pressure: the database is behind
        with self._lock:
            self._buffer.append((credential, events))
            self._recorded += 1

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything recorded before this call is committed."""
        target = self._recorded
        with self._done:
            if not self._done.wait_for(lambda: self._written >= target, timeout):
                raise TimeoutError("the recorder did not flush in time; is the database up?")

    def close(self) -> None:
        if self._thread.is_alive():
            self.flush()
            self._stop.set()
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            time.sleep(self.interval)
            with self._lock:
                batch, self._buffer = self._buffer, []
            if batch:
                self._write(batch)
                with self._done:
                    self._written += len(batch)
                    self._done.notify_all()

    def _write(self, batch: list[_Item]) -> None:
        for attempt in range(5):
            try:
                with self.database.connection() as connection:
                    write_batch(connection, batch)
                return
            except Exception:
                log.exception("recording %d issuances failed (attempt %d)", len(batch), attempt + 1)
                time.sleep(0.05 * 2**attempt)
        self._failures += 1


def write_batch(connection: Connection, batch: Sequence[_Item]) -> None:
    """Insert a batch of issuance records and chain their audit events, in one transaction."""
    bind = time_binder(connection)
    rows = [
        (
            c["kind"].value,
            c["identifier"],
            c["spiffe_id"],
            c["entry_id"],
            c["authority_id"],
            bind(c["issued_at"]),
            bind(c["not_after"]),
        )
        for c, _ in batch
        if c is not None
    ]
    bulk_insert(connection, "issued_credentials", _CREDENTIAL_COLUMNS, rows)
    audit.append(connection, [event for _, events in batch for event in events])
