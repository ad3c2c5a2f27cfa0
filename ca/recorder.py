"""Recording issued credentials and their audit events off the hot path.

An issuance costs one HSM signature (~75 µs on SoftHSM); a database commit
per issuance would cost more than that. The recorder queues each issuance's
row and audit events and a background thread writes them in batches, one
transaction per batch (group commit). ``flush()`` waits until everything
queued so far is committed; ``close()`` flushes. The queue is bounded, so a
database that falls behind slows issuance down instead of growing memory.

What is at stake if the process dies before a flush: the records of the
credentials issued in the last few milliseconds. Those credentials are
still short-lived and revocable by serial or jti (the CRL and denylist need
no issuance record). Admin changes and revocations never go through here:
they commit synchronously, in the same transaction as their audit event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert

from ca import audit
from ca.storage.db import Database
from ca.storage.models import IssuedCredential

log = logging.getLogger(__name__)


@dataclass
class _Item:
    credential: dict[str, Any] | None
    events: Sequence[audit.Event]


@dataclass
class _Barrier:
    done: threading.Event = field(default_factory=threading.Event)


class Recorder:
    """Write-behind of issuance records with group commit."""

    def __init__(
        self,
        database: Database,
        max_batch: int = 512,
        max_delay: float = 0.005,
        max_queue: int = 20_000,
    ) -> None:
        self.database = database
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._queue: queue.Queue[_Item | _Barrier | None] = queue.Queue(max_queue)
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="idmint-recorder", daemon=True)
        self._thread.start()

    @property
    def failures(self) -> int:
        """Batches that could not be written (each was retried first)."""
        return self._failures

    def record(self, credential: dict[str, Any] | None, events: Sequence[audit.Event]) -> None:
        """Queue one credential row (IssuedCredential columns) and its audit events."""
        self._queue.put(_Item(credential, events))

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything recorded before this call is committed."""
        barrier = _Barrier()
        self._queue.put(barrier)
        if not barrier.done.wait(timeout):
            raise TimeoutError("the recorder did not flush in time; is the database reachable?")

    def close(self) -> None:
        if self._thread.is_alive():
            self.flush()
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            batch: list[_Item] = []
            barriers: list[_Barrier] = []
            deadline = time.monotonic() + self.max_delay
            item: _Item | _Barrier | None = first
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, _Barrier):
                    barriers.append(item)
                else:
                    batch.append(item)
                if stop or len(batch) >= self.max_batch:
                    break
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for barrier in barriers:
                barrier.done.set()

    def _write(self, batch: list[_Item]) -> None:
        credentials = [item.credential for item in batch if item.credential is not None]
        events = [event for item in batch for event in item.events]
        for attempt in range(5):
            try:
                with self.database.session() as session:
                    if credentials:
                        session.execute(insert(IssuedCredential), credentials)
                    audit.append(session, events)
                return
            except Exception:
                log.exception("recording %d issuances failed (attempt %d)", len(batch), attempt + 1)
                time.sleep(0.05 * 2**attempt)
        self._failures += 1
