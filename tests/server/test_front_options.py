"""The server's gunicorn options that operators set: the access log switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from idmint.ca.config import load
from idmint.ca.server.app import access_log
from idmint.ca.server.errors import ServerError
from tests.server.conftest import init_data_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_data_dir(tmp_path_factory.mktemp("front") / "data")


def test_the_access_log_is_on_unless_turned_off(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert access_log(load(data)) is True
    monkeypatch.setenv("IDMINT_SERVER_ACCESS_LOG", "false")
    assert access_log(load(data)) is False
    monkeypatch.setenv("IDMINT_SERVER_ACCESS_LOG", "sometimes")
    with pytest.raises(ServerError, match="access_log must be true or false, not 'sometimes'"):
        access_log(load(data))


def test_the_config_file_can_turn_it_off(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDMINT_SERVER_ACCESS_LOG", raising=False)
    config = data / "idmint.toml"
    original = config.read_text()
    try:
        config.write_text(original + "\n[server]\naccess_log = false\n")
        assert access_log(load(data)) is False
    finally:
        config.write_text(original)
