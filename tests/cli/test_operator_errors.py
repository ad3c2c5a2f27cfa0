"""Errors that point at the fix, and tables whose columns line up (as an operator sees them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.conftest import Runner


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os
    import subprocess
    import sys

    data = tmp_path_factory.mktemp("operator") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMINT_")}
    env.pop("SOFTHSM2_CONF", None)
    script = Path(sys.executable).parent / "idmint"
    subprocess.run(
        [str(script), "init", "--data-dir", str(data), "--trust-domain", "example.org"],
        check=True,
        capture_output=True,
        env=env,
    )
    return data


def test_a_zero_ttl_names_the_allowed_range(idmint: Runner, data_dir: Path) -> None:
    done = idmint(
        "entry", "create", "--data-dir", str(data_dir), "--spiffe-id", "spiffe://example.org/z",
        "--selector", "join_token:any:true", "--owner", "ops", "--expires-at", "30d",
        "--x509-ttl", "0s",
    )  # fmt: skip
    assert done.returncode != 0
    assert "0s is outside 60-3600s" in done.stderr, done.stderr


def test_a_serial_that_is_not_hex_says_so(idmint: Runner, data_dir: Path) -> None:
    done = idmint("revoke", "x509", "--data-dir", str(data_dir), "--serial", "nothex")
    assert done.returncode == 1
    assert "serial 'nothex' is not hexadecimal" in done.stderr, done.stderr


def test_activating_with_nothing_prepared_says_to_prepare(idmint: Runner, data_dir: Path) -> None:
    done = idmint("authority", "activate", "root", "--data-dir", str(data_dir))
    assert done.returncode != 0
    assert "run 'idmint authority prepare root' first" in done.stderr, done.stderr


def _columns_line_up(text: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    assert rows, text
    # Column titles may hold one space ("NOT AFTER"); columns are two apart.
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    for row in rows:
        for start in starts[1:]:
            # every column starts right after a gap, where the header's does
            assert row[start - 2 : start] == "  " and row[start] != " ", (header, row)


def test_tables_line_up(idmint: Runner, data_dir: Path) -> None:
    for args in (("authority", "list"), ("hsm", "keys")):
        done = idmint(*args, "--data-dir", str(data_dir))
        assert done.returncode == 0, done.stderr
        _columns_line_up(done.stdout)
    entry = idmint(
        "entry", "create", "--data-dir", str(data_dir), "--spiffe-id", "spiffe://example.org/t",
        "--selector", "join_token:any:true", "--owner", "ops", "--expires-at", "30d",
    )  # fmt: skip
    assert entry.returncode == 0, entry.stderr
    made = idmint(
        "token", "create", "--data-dir", str(data_dir), "--spiffe-id", "spiffe://example.org/t",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    listed = idmint("token", "list", "--data-dir", str(data_dir))
    assert re.split(r"  +", listed.stdout.splitlines()[0]) == [
        "ID",
        "SPIFFE ID",
        "STATE",
        "EXPIRES",
    ]
    _columns_line_up(listed.stdout)
    as_json = json.loads(
        idmint("token", "list", "--data-dir", str(data_dir), "--output", "json").stdout
    )
    assert len(as_json) == 1
