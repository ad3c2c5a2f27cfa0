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

import pytest

from hsm import KeyStore
from hsm.config import SOFTHSM_PATHS
from hsm.softhsm import SoftHSMToken, create_token

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
