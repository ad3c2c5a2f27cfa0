"""Audit checkpoints signed in the HSM: verified by PyJWT, and SQL rewrites caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from idmint.ca.authority.authorities import authorities
from idmint.ca.authority.checkpoints import (
    CHECKPOINT_TYPE,
    AuditSettings,
    CheckpointInvalid,
    audit_jwks,
    checkpoint_due,
    hsm_audit_keys,
    jwks_keys,
    latest,
    sign_checkpoint,
    verify_extends,
    verify_token,
)
from idmint.ca.authority.rotation import RotationPolicy, activate, prepare, rotate_due
from idmint.ca.jose.bundle import load_bundle
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuthorityKind, AuthorityState
from idmint.hsm import KeyStore
from tests.audit_tamper import rewrite_from, truncate_to
from tests.conftest import TRUST_DOMAIN

pytestmark = pytest.mark.usefixtures("authorities")


def _append(database: Database, *actions: str) -> None:
    with database.session() as session:
        audit.append(session, [audit.Event(a, f"spiffe://example.org/{a}") for a in actions])


def _check(keystore: KeyStore, database: Database, token: str) -> audit.VerifyReport:
    keys = hsm_audit_keys(keystore, database)
    claims = verify_token(token, keys)
    with database.reading() as session:
        from idmint.ca.authority.checkpoints import stored

        others = [verify_token(c.token, keys) for c in stored(session)]
        return verify_extends(session, claims, others).chain


def test_an_audit_key_exists_and_stays_out_of_the_spiffe_bundle(database: Database) -> None:
    (audit_key,) = authorities(database, AuthorityKind.AUDIT, AuthorityState.ACTIVE)
    bundle = load_bundle(database, TRUST_DOMAIN)
    assert audit_key.kid not in {k["kid"] for k in bundle.jwks()["keys"] if "kid" in k}
    assert audit_key.kid not in {k["kid"] for k in bundle.oidc_jwks()["keys"]}
    assert [k["kid"] for k in audit_jwks(database)["keys"]] == [audit_key.kid]


def test_pyjwt_verifies_a_checkpoint_with_the_published_key(
    keystore: KeyStore, database: Database
) -> None:
    _append(database, "a", "b")
    made = sign_checkpoint(keystore, database, TRUST_DOMAIN)
    assert made is not None
    (jwk,) = audit_jwks(database)["keys"]
    public = jwt.PyJWK.from_dict(jwk).key
    claims = jwt.decode(made.token, public, algorithms=["ES256"])
    header = jwt.get_unverified_header(made.token)
    with database.reading() as session:
        head = session.execute(text("SELECT seq, hash FROM audit_head")).one()
    assert header == {"alg": "ES256", "kid": jwk["kid"], "typ": CHECKPOINT_TYPE}
    assert (claims["seq"], claims["hash"], claims["iss"]) == (
        head[0],
        head[1],
        "spiffe://example.org",
    )
    # Tamper with one claim: PyJWT refuses it too.
    other = jwt.encode({**claims, "seq": 1}, ec.generate_private_key(ec.SECP256R1()), "ES256")
    forged = made.token.split(".")[0] + "." + other.split(".")[1] + "." + made.token.split(".")[2]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, public, algorithms=["ES256"])


def test_checkpoints_are_due_on_interval_and_on_authority_changes(
    keystore: KeyStore, database: Database
) -> None:
    settings = AuditSettings(checkpoint_seconds=300)
    start = datetime.now(UTC)
    first = checkpoint_due(keystore, database, TRUST_DOMAIN, settings, start)
    assert first is not None
    assert checkpoint_due(keystore, database, TRUST_DOMAIN, settings, start) is None  # no change
    _append(database, "x509-svid.issue")
    soon = start + timedelta(seconds=10)
    assert checkpoint_due(keystore, database, TRUST_DOMAIN, settings, soon) is None
    later = start + timedelta(seconds=301)
    second = checkpoint_due(keystore, database, TRUST_DOMAIN, settings, later)
    assert second is not None and second.seq == first.seq + 1
    # An authority change is anchored at once, before the interval is up.
    policy = RotationPolicy(trust_domain=TRUST_DOMAIN)
    prepare(keystore, database, AuthorityKind.JWT, policy, "test", later)
    third = checkpoint_due(keystore, database, TRUST_DOMAIN, settings, later + timedelta(seconds=1))
    assert third is not None and third.seq == second.seq + 1
    assert latest(database) == third


def test_the_audit_key_rotates_and_old_checkpoints_still_verify(
    keystore: KeyStore, database: Database
) -> None:
    _append(database, "a")
    old = sign_checkpoint(keystore, database, TRUST_DOMAIN)
    assert old is not None
    policy = RotationPolicy(trust_domain=TRUST_DOMAIN, audit_lifetime=timedelta(days=30))
    (current,) = authorities(database, AuthorityKind.AUDIT, AuthorityState.ACTIVE)
    done = rotate_due(keystore, database, policy, now=current.not_before + timedelta(days=16))
    assert any(d.startswith("prepared audit") for d in done)
    done = rotate_due(keystore, database, policy, now=current.not_before + timedelta(days=26))
    assert any(d.startswith("activated audit") for d in done)
    new = sign_checkpoint(keystore, database, TRUST_DOMAIN)
    assert new is not None and new.kid != old.kid
    # Both keys are published and both checkpoints verify; the retired key stays.
    assert {k["kid"] for k in audit_jwks(database)["keys"]} == {old.kid, new.kid}
    for made in (old, new):
        _check(keystore, database, made.token)
    later = current.not_before + timedelta(days=29)
    rotate_due(keystore, database, policy, now=later)
    assert old.kid in hsm_audit_keys(keystore, database)


def test_manual_activation_of_an_audit_key(keystore: KeyStore, database: Database) -> None:
    policy = RotationPolicy(trust_domain=TRUST_DOMAIN)
    waiting = prepare(keystore, database, AuthorityKind.AUDIT, policy, "test")
    activate(database, waiting.id, "test")
    _append(database, "a")
    made = sign_checkpoint(keystore, database, TRUST_DOMAIN)
    assert made is not None and made.kid == waiting.kid


def test_a_consistent_rewrite_fails_against_an_old_checkpoint_naming_the_row(
    keystore: KeyStore, database: Database
) -> None:
    base = _head_seq(database)
    tokens = []
    for n in range(5):
        _append(database, f"event{n}")
        made = sign_checkpoint(keystore, database, TRUST_DOMAIN)
        assert made is not None
        tokens.append(made.token)
    saved = tokens[-1]
    assert _check(keystore, database, saved).events == base + 5
    target = base + 3
    rewrite_from(database.engine, target, "spiffe://example.org/evil")
    with database.reading() as session:
        assert audit.verify_database(session).events == base + 5  # the chain alone is fooled
    with pytest.raises(audit.AuditChainBroken, match=f"first event that differs is event {target}"):
        _check(keystore, database, saved)
    # Without the stored checkpoints (deleted by the same administrator) the
    # operator's own copy still catches it, and bounds the row.
    with database.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_checkpoints"))
    with pytest.raises(audit.AuditChainBroken, match=f"one of events 1-{base + 5}"):
        _check(keystore, database, saved)


def _head_seq(database: Database) -> int:
    with database.reading() as session:
        return int(session.execute(text("SELECT seq FROM audit_head")).scalar_one())


def test_a_truncated_tail_with_a_fixed_head_fails(keystore: KeyStore, database: Database) -> None:
    _append(database, "a", "b", "c", "d")
    made = sign_checkpoint(keystore, database, TRUST_DOMAIN)
    assert made is not None
    truncate_to(database.engine, made.seq - 2)
    with database.reading() as session:
        assert audit.verify_database(session).events == made.seq - 2  # the chain alone is fooled
    with pytest.raises(audit.AuditChainBroken, match="cut off the end"):
        _check(keystore, database, made.token)


def test_a_checkpoint_signed_by_another_key_is_refused(
    keystore: KeyStore, database: Database
) -> None:
    _append(database, "a")
    made = sign_checkpoint(keystore, database, TRUST_DOMAIN)
    assert made is not None
    claims = jwt.decode(made.token, options={"verify_signature": False})
    forger = ec.generate_private_key(ec.SECP256R1())
    keys = hsm_audit_keys(keystore, database)
    for kid in (made.kid, "someone-elses-key"):
        forged = jwt.encode(
            {**claims, "seq": 1}, forger, "ES256", headers={"kid": kid, "typ": CHECKPOINT_TYPE}
        )
        with pytest.raises(CheckpointInvalid, match=r"forged|not one of this CA's"):
            verify_token(forged, keys)


def test_a_key_planted_in_the_database_is_not_trusted(
    keystore: KeyStore, database: Database
) -> None:
    """Whoever writes the database can add an audit authority row, not an HSM key."""
    forger = ec.generate_private_key(ec.SECP256R1())
    pem = (
        forger.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    from idmint.ca.authority.authorities import jwk_thumbprint_kid

    kid = jwk_thumbprint_kid(forger.public_key())
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO authorities (kind, state, key_uri, key_type, kid, public_key_pem, "
                "not_before, not_after, created_at, updated_at) VALUES ('audit', 'retired', "
                "'pkcs11:id=%00', 'ec-p256/ES256', :kid, :pem, :t, :t, :t, :t)"
            ),
            {"kid": kid, "pem": pem, "t": datetime.now(UTC)},
        )
    forged = jwt.encode(
        {
            "iss": "spiffe://example.org",
            "seq": 1,
            "hash": "0" * 64,
            "iat": 0,
            "time": "2026-01-01T00:00:00Z",
        },
        forger,
        "ES256",
        headers={"kid": kid, "typ": CHECKPOINT_TYPE},
    )
    assert kid in jwks_keys(audit_jwks(database))  # the database is fooled
    with pytest.raises(CheckpointInvalid, match="not one of this CA's"):
        verify_token(forged, hsm_audit_keys(keystore, database))


def test_malformed_checkpoints_are_refused_clearly(keystore: KeyStore, database: Database) -> None:
    keys = hsm_audit_keys(keystore, database)
    with pytest.raises(CheckpointInvalid, match="not a compact JWS"):
        verify_token("not a token", keys)
    svid_like = jwt.encode({"sub": "x"}, ec.generate_private_key(ec.SECP256R1()), "ES256")
    with pytest.raises(CheckpointInvalid, match="not an audit checkpoint"):
        verify_token(svid_like, keys)
