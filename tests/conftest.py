"""Shared fixtures: a real SoftHSM token, fresh for each test.

Every token of a test run lives in one SoftHSM token directory, because
SoftHSM reads its configuration once per process (at C_Initialize); each test
gets a token of its own with a unique label and its own random PINs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database
from idmint.hsm import KeyStore
from idmint.hsm.config import SOFTHSM_PATHS
from idmint.hsm.softhsm import SoftHSMToken, create_token

if TYPE_CHECKING:
    from idmint.ca.issuance.entries import EntryStore
    from idmint.ca.issuance.issuer import Issuer

SOFTHSM_AVAILABLE = any(Path(p).is_file() for p in SOFTHSM_PATHS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SOFTHSM_AVAILABLE:
        return
    skip = pytest.mark.skip(reason="SoftHSM v2 is not installed (apt-get install softhsm2)")
    for item in items:
        if "softhsm_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def softhsm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The token directory (and softhsm2.conf) shared by this test run."""
    return tmp_path_factory.mktemp("softhsm")


@pytest.fixture
def token(softhsm_dir: Path, tmp_path: Path) -> Iterator[SoftHSMToken]:
    """A new SoftHSM token with random PINs in files of mode 0600."""
    made = create_token(softhsm_dir, f"t-{uuid.uuid4().hex[:20]}", secrets_dir=tmp_path / "secrets")
    yield made


@pytest.fixture
def keystore(token: SoftHSMToken, monkeypatch: pytest.MonkeyPatch) -> Iterator[KeyStore]:
    """A key store open on ``token``."""
    monkeypatch.delenv("IDMINT_HSM_PIN", raising=False)
    store = KeyStore(token.hsm_config())
    yield store
    store.close()


@pytest.fixture
def no_pin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDMINT_HSM_PIN", raising=False)
    assert "IDMINT_HSM_PIN" not in os.environ


# -- databases: every storage test runs on SQLite and on PostgreSQL ----------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    from tests.pg import postgres_server

    try:
        with postgres_server() as server:
            yield server
    except RuntimeError as exc:  # not installed: say so, loudly
        pytest.skip(str(exc))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite in a temp dir, then a fresh PostgreSQL database."""
    from idmint.ca.storage.db import migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'idmint.db'}"
        migrate(url)
        yield url
        return
    from tests.pg import fresh_database

    server = request.getfixturevalue("pg_server")
    with fresh_database(server) as url:
        migrate(url)
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.close()


TRUST_DOMAIN = "example.org"


@pytest.fixture
def trust_domain() -> TrustDomain:
    return TrustDomain(TRUST_DOMAIN)


@pytest.fixture
def authorities(keystore: KeyStore, database: Database) -> None:
    """An active root, intermediate and JWT authority."""
    from idmint.ca.authority.authorities import create_root, ensure_authorities

    create_root(keystore, database, TRUST_DOMAIN)
    ensure_authorities(keystore, database, TRUST_DOMAIN)


@pytest.fixture
def issuer(
    keystore: KeyStore, database: Database, authorities: None, trust_domain: TrustDomain
) -> Iterator[Issuer]:
    """An issuer with no caching, so tests see their own changes at once."""
    from idmint.ca.issuance.issuer import Issuer

    made = Issuer(keystore, database, trust_domain, "https://idmint.test", cache_seconds=0)
    yield made
    made.close()


@pytest.fixture
def entries(database: Database, trust_domain: TrustDomain) -> EntryStore:
    from idmint.ca.issuance.entries import EntryStore

    return EntryStore(database, trust_domain)
