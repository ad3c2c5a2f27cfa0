"""Authority rotation: operator transitions, automatic rotation and races (SQLite, PostgreSQL)."""

from __future__ import annotations

import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from idmint.ca.authority.authorities import authorities, create_root, ensure_authorities
from idmint.ca.authority.rotation import (
    InvalidTransition,
    RotationPolicy,
    activate,
    prepare,
    retire,
    revoke,
    rotate_due,
    taint,
)
from idmint.ca.jose.bundle import load_bundle
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuthorityKind, AuthorityState
from idmint.hsm import KeyStore

TD = "example.org"
POLICY = RotationPolicy(TD)
Kind, State = AuthorityKind, AuthorityState


def _setup(keystore: KeyStore, database: Database, now: datetime | None = None) -> None:
    create_root(keystore, database, TD, now=now)
    ensure_authorities(keystore, database, TD, now=now)


def _states(database: Database, kind: AuthorityKind) -> list[str]:
    return [a.state.value for a in authorities(database, kind)]


def _verify(tmp_path: Path, root_pem: str, chain: list[str]) -> bool:
    (tmp_path / "root.pem").write_text(root_pem)
    (tmp_path / "leaf.pem").write_text(chain[-1])
    (tmp_path / "untrusted.pem").write_text("".join(chain[:-1]) or root_pem)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"),
         "-untrusted", str(tmp_path / "untrusted.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, check=False,
    )  # fmt: skip
    return done.returncode == 0


def test_root_rotation_prepare_activate_retire_remove(
    keystore: KeyStore, database: Database, tmp_path: Path
) -> None:
    _setup(keystore, database)
    old_root = authorities(database, Kind.ROOT)[0]
    old_intermediate = authorities(database, Kind.INTERMEDIATE)[0]
    sequence = load_bundle(database, TD).sequence

    new_root = prepare(keystore, database, Kind.ROOT, POLICY, "ops")
    bundle = load_bundle(database, TD)
    assert len(bundle.roots) == 2 and bundle.sequence == sequence + 1  # published before use
    assert _states(database, Kind.ROOT) == ["active", "prepared"]

    activate(database, new_root.id, "ops")
    assert _states(database, Kind.ROOT) == ["retired", "active"]
    assert len(load_bundle(database, TD).roots) == 2  # the old root still validates old chains

    # The next intermediate chains to the new root.
    successor = prepare(keystore, database, Kind.INTERMEDIATE, POLICY, "ops")
    assert successor.parent_id == new_root.id
    retire(database, old_intermediate.id, "ops")
    assert _states(database, Kind.INTERMEDIATE) == ["retired", "active"]
    assert new_root.certificate_pem and successor.certificate_pem and old_root.certificate_pem
    assert _verify(tmp_path, new_root.certificate_pem, [successor.certificate_pem])
    assert not _verify(tmp_path, old_root.certificate_pem, [successor.certificate_pem])

    # Once nothing signed under the old intermediate can be valid, it goes, then the old root.
    later = datetime.now(UTC) + timedelta(hours=2)
    done = rotate_due(keystore, database, POLICY, now=later)
    assert f"removed intermediate {old_intermediate.id}" in done
    assert f"removed root {old_root.id}" in done
    assert _states(database, Kind.ROOT) == ["removed", "active"]
    assert len(load_bundle(database, TD).roots) == 1
    labels = {k.label for k in keystore.list_keys()}
    assert not any(str(old_root.key_uri).endswith(label) for label in labels)
    assert len(labels) == 4  # new root, new intermediate, JWT key, audit key


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("activate active", "only a prepared authority can be activated"),
        ("activate removed", "only a prepared authority can be activated"),
        ("revoke only root", "revoking the only root without a successor"),
        ("revoke active", "is active; taint it first"),
        ("second prepared", "already waiting"),
        ("retire without successor", "would leave none to sign"),
    ],
)
def test_invalid_transitions_are_refused_and_change_nothing(
    keystore: KeyStore, database: Database, action: str, reason: str
) -> None:
    _setup(keystore, database)
    root = authorities(database, Kind.ROOT)[0]
    jwt_key = authorities(database, Kind.JWT)[0]
    if action == "activate removed":
        prepared = prepare(keystore, database, Kind.JWT, POLICY, "ops")
        taint(keystore, database, prepared.id, POLICY, "ops")
        revoke(keystore, database, prepared.id, "ops")
    before = [(a.id, a.state) for a in authorities(database)]
    sequence = load_bundle(database, TD).sequence
    with pytest.raises(InvalidTransition, match=reason):
        if action == "activate active":
            activate(database, root.id, "ops")
        elif action == "activate removed":
            activate(database, before[-1][0], "ops")
        elif action == "revoke only root":
            revoke(keystore, database, root.id, "ops")
        elif action == "revoke active":
            revoke(keystore, database, jwt_key.id, "ops")
        elif action == "second prepared":
            prepare(keystore, database, Kind.JWT, POLICY, "ops")
            before[:] = [(a.id, a.state) for a in authorities(database)]
            sequence = load_bundle(database, TD).sequence
            prepare(keystore, database, Kind.JWT, POLICY, "ops")
        elif action == "retire without successor":
            retire(database, jwt_key.id, "ops")
    assert [(a.id, a.state) for a in authorities(database)] == before
    assert load_bundle(database, TD).sequence == sequence


def test_automatic_rotation_follows_the_lifetime(keystore: KeyStore, database: Database) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    _setup(keystore, database, now=start)
    assert rotate_due(keystore, database, POLICY, now=start + timedelta(hours=11)) == []
    done = rotate_due(keystore, database, POLICY, now=start + timedelta(hours=12, minutes=1))
    assert sorted(d.split()[1] for d in done) == ["intermediate", "jwt"]
    assert _states(database, Kind.JWT) == ["active", "prepared"]
    # Published before it signs: the prepared JWT key is already in the JWKS.
    assert len(load_bundle(database, TD).jwt_keys) == 2
    assert rotate_due(keystore, database, POLICY, now=start + timedelta(hours=19)) == []
    done = rotate_due(keystore, database, POLICY, now=start + timedelta(hours=20, minutes=1))
    assert {d.split()[0] for d in done} == {"activated"}
    assert _states(database, Kind.JWT) == ["retired", "active"]
    done = rotate_due(keystore, database, POLICY, now=start + timedelta(hours=21, minutes=2))
    assert sorted(done)[0].startswith("removed")
    assert _states(database, Kind.JWT) == ["removed", "active"]
    assert len(load_bundle(database, TD).jwt_keys) == 1


def test_racing_replicas_prepare_one_successor(keystore: KeyStore, database: Database) -> None:
    _setup(keystore, database)
    keys_before = len(keystore.list_keys())
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def race() -> None:
        barrier.wait()
        try:
            prepare(keystore, database, Kind.INTERMEDIATE, POLICY, "replica")
            outcomes.append("prepared")
        except InvalidTransition:
            outcomes.append("refused")

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("prepared") == 1 and outcomes.count("refused") == 3
    assert _states(database, Kind.INTERMEDIATE) == ["active", "prepared"]
    assert len(keystore.list_keys()) == keys_before + 1  # losers destroyed their keys


def test_taint_replaces_the_active_key_at_once(keystore: KeyStore, database: Database) -> None:
    _setup(keystore, database)
    jwt_key = authorities(database, Kind.JWT)[0]
    tainted, successor = taint(keystore, database, jwt_key.id, POLICY, "ops")
    assert tainted.state is State.TAINTED and successor is not None
    assert _states(database, Kind.JWT) == ["tainted", "active"]
    kids = [kid for kid, _, _ in load_bundle(database, TD).jwt_keys]
    assert jwt_key.kid in kids  # still published until revoked
    revoke(keystore, database, jwt_key.id, "ops")
    assert jwt_key.kid not in [kid for kid, _, _ in load_bundle(database, TD).jwt_keys]
