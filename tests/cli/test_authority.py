"""``idmint authority``: a root rotation an operator can follow, through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Runner

pytestmark = pytest.mark.slow  # a root rotation runbook through the real command


def test_root_rotation_runbook(idmint: Runner, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert idmint("init", "--data-dir", data, "--trust-domain", "example.org").returncode == 0

    def run(*args: str) -> list[dict[str, object]]:
        done = idmint("authority", *args, "--data-dir", data, "--output", "json")
        assert done.returncode == 0, done.stderr
        result: list[dict[str, object]] = json.loads(done.stdout)
        return result

    (old,) = [row for row in run("list") if row["kind"] == "root"]
    assert old["state"] == "active"
    (new,) = run("prepare", "root")
    assert new["state"] == "prepared"
    bundle = idmint("bundle", "show", "--data-dir", data)
    assert bundle.stdout.count("BEGIN CERTIFICATE") == 2  # published before it is used
    (activated,) = run("activate", "root")
    assert activated["id"] == new["id"] and activated["state"] == "active"
    states = {row["id"]: row["state"] for row in run("list")}
    assert states[old["id"]] == "retired"

    refused = idmint("authority", "revoke", "root", "--id", str(new["id"]), "--data-dir", data)
    assert refused.returncode == 1 and "only root without a successor" in refused.stderr
    twice = idmint("authority", "activate", "root", "--id", str(old["id"]), "--data-dir", data)
    assert twice.returncode == 1 and "only a prepared authority can be activated" in twice.stderr
    (removed,) = run("revoke", "root", "--id", str(old["id"]))
    assert removed["state"] == "removed"
    assert idmint("bundle", "show", "--data-dir", data).stdout.count("BEGIN CERTIFICATE") == 1
    audit = idmint("audit", "verify", "--data-dir", data, "--output", "json")
    assert audit.returncode == 0 and json.loads(audit.stdout)["events"] >= 4
