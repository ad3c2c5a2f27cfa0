"""Opening a data directory's database and token for a command.

Light at import (the server's modules are imported when a command runs), so
``idmint --help`` and shell completion never load SQLAlchemy or PKCS#11.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from idmint.ca.config import CAConfig
    from idmint.ca.storage.db import Database


def resolve_data_dir(data_dir: str | None) -> Path:
    """``--data-dir``, else ``IDMINT_DATA_DIR``, checked by the CA's config."""
    from idmint.ca.config import resolve_data_dir as resolve

    return resolve(data_dir)


@contextmanager
def data_directory(data_dir: str | None) -> Iterator[tuple[CAConfig, Database]]:
    """The config and the (migrated) database of ``--data-dir`` / ``IDMINT_DATA_DIR``."""
    from idmint.ca.config import load
    from idmint.ca.storage.db import Database, migrate

    config = load(resolve_data_dir(data_dir))
    migrate(config.database_url)
    database = Database(config.database_url)
    try:
        yield config, database
    finally:
        database.close()
