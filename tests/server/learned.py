"""A learned week of issuance for an entry (or an agent), written to a server's database.

The server runs in real time, so the week is learned in-process, with a
fake clock whose week ends at the real "now", through the same
:class:`AnomalyMonitor` the server uses, against the server's own database;
it is written back (``flush``) before the server first checks the subject
(or, for a subject the server has checked already, with ``[anomaly]
sync_seconds = 0``, so the server re-reads the row at every check).
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import delete

from idmint.ca.anomaly.monitor import REQUEST_SOURCE, AnomalyMonitor, Request
from idmint.ca.anomaly.policy import Settings
from idmint.ca.config import load
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AnomalyBaseline
from idmint.ca.storage.recorder import Recorder
from tests.server.conftest import Server


def server_database(server: Server) -> Database:
    return Database(load(server.data_dir).database_url)


def learn_week(
    server: Server,
    subject: dict[str, Any],
    selectors: tuple[str, ...] = (),
    audiences: tuple[str, ...] = (),
    kind: str = "x509",
    jitter: float = 30.0,
    seed: int = 1,
    count: int = 1,
    by_proof: bool = False,
) -> None:
    """A request every 5 minutes (+- jitter) for the week before now, from loopback.

    ``subject`` has the baseline key (``id``) and ``spiffe_id``; a baseline
    already there is replaced. The last learned request falls in an earlier
    minute than the real ones that follow, so the server's counts start in a
    minute of their own.
    """
    rng = random.Random(seed)
    now = datetime.now(UTC)
    end = now.replace(second=0, microsecond=0)
    database = server_database(server)
    recorder = Recorder(database)
    # The server sees 127.0.0.1; learning another network would be news to it.
    source = REQUEST_SOURCE.set("127.0.0.1")
    try:
        with database.session() as session:
            session.execute(
                delete(AnomalyBaseline).where(AnomalyBaseline.entry_id == subject["id"])
            )
        learner = AnomalyMonitor(database, Settings(sync_seconds=1e9), recorder)
        who = SimpleNamespace(id=subject["id"], spiffe_id=subject["spiffe_id"])
        moment = end - timedelta(days=7)
        while moment < end - timedelta(seconds=1):
            learner.check(
                who, Request(kind, moment, selectors, audiences, count=count, by_proof=by_proof)
            )
            moment += timedelta(seconds=300 + rng.uniform(-jitter, jitter))
        learner.flush()
    finally:
        REQUEST_SOURCE.reset(source)
        recorder.close()
        database.close()


def wait_for_second(limit: float) -> None:
    """If the current minute is past second ``limit``, wait for the next one."""
    second = datetime.now(UTC).second + datetime.now(UTC).microsecond / 1e6
    if second > limit:
        time.sleep(60.5 - second)
