"""Opening a data directory's database and token for a command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from idmint.ca.config import CAConfig, load, resolve_data_dir
from idmint.ca.storage.db import Database, migrate


@contextmanager
def data_directory(data_dir: str | None) -> Iterator[tuple[CAConfig, Database]]:
    """The config and the (migrated) database of ``--data-dir`` / ``IDMINT_DATA_DIR``."""
    config = load(resolve_data_dir(data_dir))
    migrate(config.database_url)
    database = Database(config.database_url)
    try:
        yield config, database
    finally:
        database.close()
