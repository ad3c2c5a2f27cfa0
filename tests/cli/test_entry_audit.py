"""``idmint entry``, ``idmint audit verify`` and ``idmint bundle show --format jwks``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import Runner, run_idmint


def _init(data: Path) -> Path:
    done = run_idmint("init", "--data-dir", str(data), "--trust-domain", "example.org")
    assert done.returncode == 0, done.stderr
    return data


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return _init(tmp_path / "data")


@pytest.fixture(scope="module")
def refusing_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for every refusal: each must leave it as empty as it found it."""
    return _init(tmp_path_factory.mktemp("refusals") / "data")


def _create(idmint: Runner, data: Path, *extra: str) -> dict[str, object]:
    done = idmint(
        "entry",
        "create",
        "--data-dir",
        str(data),
        "--spiffe-id",
        "spiffe://example.org/web",
        "--selector",
        "unix:uid:1000",
        "--selector",
        "k8s:ns:prod",
        "--owner",
        "team-web",
        "--expires-at",
        "90d",
        "--audience",
        "https://api.example.org",
        "--dns-name",
        "web.example.org",
        "--output",
        "json",
        *extra,
    )
    assert done.returncode == 0, done.stderr
    created: dict[str, object] = json.loads(done.stdout)
    return created


@pytest.mark.slow  # a dozen CLI processes (create, list, update, show, delete, audit)
def test_entry_lifecycle(idmint: Runner, data_dir: Path) -> None:
    created = _create(idmint, data_dir)
    assert created["selectors"] == ["k8s:ns:prod", "unix:uid:1000"]
    assert created["x509_ttl_seconds"] == 600 and created["jwt_ttl_seconds"] == 300
    entry_id = str(created["id"])

    listed = json.loads(
        idmint("entry", "list", "--data-dir", str(data_dir), "--output", "json").stdout
    )
    assert [e["id"] for e in listed] == [entry_id]

    updated = idmint(
        "entry",
        "update",
        entry_id,
        "--data-dir",
        str(data_dir),
        "--disabled",
        "--x509-ttl",
        "30m",
        "--output",
        "json",
    )
    assert updated.returncode == 0, updated.stderr
    changed = json.loads(updated.stdout)
    assert changed["disabled"] is True and changed["x509_ttl_seconds"] == 1800
    assert changed["owner"] == "team-web"

    shown = idmint("entry", "show", entry_id, "--data-dir", str(data_dir))
    assert "team-web" in shown.stdout and "True" in shown.stdout

    assert idmint("entry", "delete", entry_id, "--data-dir", str(data_dir)).returncode == 0
    missing = idmint("entry", "show", entry_id, "--data-dir", str(data_dir))
    assert (
        missing.returncode == 1 and f"no registration entry with id '{entry_id}'" in missing.stderr
    )

    verified = idmint("audit", "verify", "--data-dir", str(data_dir), "--output", "json")
    assert verified.returncode == 0, verified.stderr
    # root and audit key creation, entry create, update, delete
    assert json.loads(verified.stdout)["events"] == 5


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--spiffe-id", "spiffe://other.org/web"], "not in this trust domain"),
        (["--spiffe-id", "spiffe://example.org"], "needs a path"),
        (["--x509-ttl", "2h"], "x509 TTL 7200s is outside 60-3600s"),
        (["--jwt-ttl", "30m"], "JWT TTL 1800s is outside 60-900s"),
        (["--selector", "no-colon"], "is not 'type:value'"),
        (["--dns-name", "Bad_Name"], "DNS name 'Bad_Name' is not valid"),
        (["--expires-at", "2020-01-01T00:00:00Z"], "is not in the future"),
        (["--expires-at", "2030-01-01T00:00:00"], "has no time zone"),
        (["--owner", " "], "needs an owner"),
    ],
)
def test_bad_entries_are_refused_and_nothing_is_written(
    idmint: Runner, refusing_data_dir: Path, args: list[str], reason: str
) -> None:
    data_dir = refusing_data_dir
    base = {
        "--spiffe-id": "spiffe://example.org/web",
        "--selector": "unix:uid:1000",
        "--owner": "team",
        "--expires-at": "30d",
    }
    overrides = dict(zip(args[::2], args[1::2], strict=True))
    argv = [item for key, value in {**base, **overrides}.items() for item in (key, value)]
    done = idmint("entry", "create", "--data-dir", str(data_dir), *argv)
    assert done.returncode != 0
    assert reason in done.stderr
    listed = idmint("entry", "list", "--data-dir", str(data_dir), "--output", "json")
    assert json.loads(listed.stdout) == []


def test_audit_verify_catches_tampering_in_sql(idmint: Runner, data_dir: Path) -> None:
    _create(idmint, data_dir)
    assert idmint("audit", "verify", "--data-dir", str(data_dir)).returncode == 0
    with sqlite3.connect(data_dir / "idmint.db") as db:
        db.execute("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 3")
    done = idmint("audit", "verify", "--data-dir", str(data_dir))
    assert done.returncode == 1
    assert "audit event 3 (entry.create spiffe://example.org/web) was edited" in done.stderr


def test_bundle_jwks_has_the_root_with_x5c(idmint: Runner, data_dir: Path) -> None:
    done = idmint("bundle", "show", "--data-dir", str(data_dir), "--format", "jwks")
    assert done.returncode == 0, done.stderr
    jwks = json.loads(done.stdout)
    (root,) = jwks["keys"]
    assert root["use"] == "x509-svid" and root["kty"] == "EC" and len(root["x5c"]) == 1
    assert "kid" not in root
    assert jwks["spiffe_sequence"] >= 1 and jwks["spiffe_refresh_hint"] > 0


def test_the_owner_defaults_to_the_invoking_user(idmint: Runner, data_dir: Path) -> None:
    import os
    import pwd

    def owner(name: str, env: dict[str, str | None]) -> object:
        done = idmint(
            "entry", "create", "--data-dir", str(data_dir), "--spiffe-id",
            f"spiffe://example.org/{name}", "--selector", "join_token:any:true",
            "--expires-at", "30d", "--output", "json", env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["owner"]

    # A root shell or a container without $USER: the password database names us.
    unset: dict[str, str | None] = dict.fromkeys(("LOGNAME", "USER", "LNAME", "USERNAME"))
    assert owner("no-user", unset) == pwd.getpwuid(os.getuid()).pw_name
    assert owner("with-user", {**unset, "USER": "ops-alice"}) == "ops-alice"


def _entry(idmint: Runner, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return idmint(
        "entry", "create", "--data-dir", str(data), "--expires-at", "30d", "--owner", "ops",
        "--output", "json", *args,
    )  # fmt: skip


def test_selector_types_no_attestor_produces_are_warned_about(
    idmint: Runner, data_dir: Path
) -> None:
    # A fresh data directory serves join tokens only.
    direct = _entry(idmint, data_dir, "--spiffe-id", "spiffe://example.org/u", "--selector",
                    "unix:uid:1000")  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    assert "warning: selector type 'unix'" in direct.stderr
    assert "--parent-id" in direct.stderr and "(join_token)" in direct.stderr
    assert json.loads(direct.stdout)["selectors"] == ["unix:uid:1000"]  # created all the same

    k8s = _entry(idmint, data_dir, "--spiffe-id", "spiffe://example.org/k", "--selector",
                 "k8s:ns:prod")  # fmt: skip
    assert k8s.returncode == 0, k8s.stderr
    assert "selector type 'k8s' is produced by no attestor" in k8s.stderr
    assert "configured: join_token" in k8s.stderr

    # Through an agent, unix and systemd selectors are what the workload attestors make.
    parented = _entry(
        idmint, data_dir, "--spiffe-id", "spiffe://example.org/p", "--selector",
        "unix:uid:1000", "--selector", "systemd:id:web.service", "--parent-id",
        "spiffe://example.org/idmint/agent/join_token/n1",
    )  # fmt: skip
    assert parented.returncode == 0, parented.stderr
    assert "warning" not in parented.stderr
    plain = _entry(idmint, data_dir, "--spiffe-id", "spiffe://example.org/j", "--selector",
                   "join_token:any:true")  # fmt: skip
    assert plain.returncode == 0 and "warning" not in plain.stderr


def test_an_identical_entry_is_refused_naming_the_first(idmint: Runner, data_dir: Path) -> None:
    same = ("--spiffe-id", "spiffe://example.org/twin", "--selector", "join_token:any:true",
            "--selector", "k8s:ns:prod")  # fmt: skip
    first = _entry(idmint, data_dir, *same)
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["id"]
    events = json.loads(
        idmint("audit", "verify", "--data-dir", str(data_dir), "--output", "json").stdout
    )["events"]

    # The selectors in another order and another TTL: still the same grant.
    twin = _entry(
        idmint, data_dir, "--spiffe-id", "spiffe://example.org/twin", "--selector",
        "k8s:ns:prod", "--selector", "join_token:any:true", "--x509-ttl", "5m",
    )  # fmt: skip
    assert twin.returncode == 1
    assert f"entry {first_id} already grants spiffe://example.org/twin" in twin.stderr
    listed = json.loads(
        idmint("entry", "list", "--data-dir", str(data_dir), "--output", "json").stdout
    )
    assert [e["id"] for e in listed] == [first_id]
    after = json.loads(
        idmint("audit", "verify", "--data-dir", str(data_dir), "--output", "json").stdout
    )["events"]
    assert after == events

    # One selector more, or a parent: another grant.
    assert _entry(idmint, data_dir, *same, "--selector", "k8s:sa:web").returncode == 0
    parented = _entry(idmint, data_dir, *same, "--parent-id",
                      "spiffe://example.org/idmint/agent/join_token/n1")  # fmt: skip
    assert parented.returncode == 0, parented.stderr
