"""Authorities in the HSM: root, intermediate and JWT key, recorded in the database."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import func, select

from idmint.ca.authority.authorities import (
    active,
    authorities,
    create_intermediate,
    create_jwt_authority,
    create_root,
    ensure_authorities,
    jwk_thumbprint_kid,
)
from idmint.ca.errors import CAError
from idmint.ca.jose.bundle import load_bundle
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuthorityKind, AuthorityState
from idmint.hsm import KeyStore


def test_intermediate_chains_to_root_in_openssl(
    keystore: KeyStore, database: Database, tmp_path: Path
) -> None:
    root = create_root(keystore, database, "example.org")
    intermediate = create_intermediate(keystore, database, "example.org")
    assert intermediate.parent_id == root.id
    assert root.certificate_pem and intermediate.certificate_pem
    (tmp_path / "root.pem").write_text(root.certificate_pem)
    (tmp_path / "int.pem").write_text(intermediate.certificate_pem)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "int.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    certificate = x509.load_pem_x509_certificate(intermediate.certificate_pem.encode())
    basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 24 * 3600 <= lifetime.total_seconds() <= 24 * 3600 + 60


def test_ensure_authorities_is_idempotent_and_bumps_the_bundle(
    keystore: KeyStore, database: Database
) -> None:
    create_root(keystore, database, "example.org")
    sequence_before = load_bundle(database, "example.org").sequence
    ensure_authorities(keystore, database, "example.org")
    ensure_authorities(keystore, database, "example.org")
    assert len(authorities(database, AuthorityKind.INTERMEDIATE)) == 1
    assert len(authorities(database, AuthorityKind.JWT)) == 1
    bundle = load_bundle(database, "example.org")
    # The audit key is not in the bundle: creating it does not bump it.
    assert len(authorities(database, AuthorityKind.AUDIT)) == 1
    assert bundle.sequence == sequence_before + 2
    # Keys: root, intermediate, JWT, audit; no stray key from the second call.
    assert len(keystore.list_keys()) == 4


def test_one_active_per_kind_is_enforced_by_the_database(
    keystore: KeyStore, database: Database
) -> None:
    create_root(keystore, database, "example.org")
    create_jwt_authority(keystore, database)
    keys_before = len(keystore.list_keys())
    with pytest.raises(CAError, match="another server created the active jwt authority"):
        create_jwt_authority(keystore, database)
    # The losing key was destroyed again: no orphan in the HSM.
    assert len(keystore.list_keys()) == keys_before
    prepared = create_jwt_authority(keystore, database, state=AuthorityState.PREPARED)
    assert prepared.state is AuthorityState.PREPARED


def test_jwt_kid_is_the_jwk_thumbprint(keystore: KeyStore, database: Database) -> None:
    row = create_jwt_authority(keystore, database, "ES384")
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    public = load_pem_public_key(row.public_key_pem.encode())
    assert row.kid == jwk_thumbprint_kid(public)  # type: ignore[arg-type]
    assert row.key_type == "ec-p384/ES384"
    assert active(database, AuthorityKind.JWT).kid == row.kid


def test_unknown_jwt_algorithm_creates_nothing(keystore: KeyStore, database: Database) -> None:
    with pytest.raises(CAError, match="'HS256' is not supported"):
        create_jwt_authority(keystore, database, "HS256")
    assert keystore.list_keys() == []
    with database.session() as session:
        from idmint.ca.storage.models import Authority

        assert session.scalar(select(func.count()).select_from(Authority)) == 0
