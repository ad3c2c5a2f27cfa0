"""Authorities: CA and JWT signing keys in the HSM, with their state in the database.

Three kinds (DESIGN.md, Keys and authorities): the root (self-signed, made by
``idmint init``), the intermediate that signs X509-SVIDs, and the JWT key that
signs JWT-SVIDs. Several of each kind may exist (prepared, active, retired,
removed, tainted); the database allows one active per kind, so replicas that
race to create one settle it there, and the loser destroys its new key.

Every change raises the bundle's ``spiffe_sequence`` and is audited in the
same transaction as the change itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import josepy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idmint.ca.errors import AuthorityConflict, AuthorityNotFound, UnsupportedAlgorithm
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import Authority, AuthorityKind, AuthorityState, BundleState
from idmint.ca.x509.profiles import intermediate_certificate, root_certificate, signature_hash
from idmint.hsm import KeyStore, KeyType
from idmint.hsm.keys import AnyHSMKey
from idmint.hsm.uri import PKCS11URI

#: Key type behind each JWT-SVID algorithm (RFC 7518 section 3.1).
JWT_KEY_TYPES = {
    "ES256": KeyType.EC_P256,
    "ES384": KeyType.EC_P384,
    "RS256": KeyType.RSA_2048,
    "PS256": KeyType.RSA_2048,
}


@dataclass(frozen=True)
class RootInfo:
    """What an operator wants to see of a root authority."""

    trust_domain: str
    subject: str
    serial: str
    sha256_fingerprint: str
    not_before: datetime
    not_after: datetime
    key_uri: str
    key_type: str
    certificate_pem: str


def describe_root(certificate: x509.Certificate, key_uri: str, key_type: str) -> RootInfo:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return RootInfo(
        trust_domain=uris[0].removeprefix("spiffe://") if uris else "",
        subject=certificate.subject.rfc4514_string(),
        serial=format(certificate.serial_number, "x"),
        sha256_fingerprint=certificate.fingerprint(hashes.SHA256()).hex(":"),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        key_uri=key_uri,
        key_type=key_type,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _public_pem(key: AnyHSMKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def jwk_thumbprint_kid(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """A stable key id: the RFC 7638 JWK thumbprint (SHA-256), base64url."""
    jwk: josepy.JWK
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = josepy.JWKEC(key=public_key)
    else:
        jwk = josepy.JWKRSA(key=public_key)
    return josepy.b64.b64encode(jwk.thumbprint()).decode("ascii")


def bump_bundle_sequence(session: Session, now: datetime) -> None:
    """Raise ``spiffe_sequence``: the bundle changed."""
    session.execute(
        update(BundleState)
        .where(BundleState.id == 1)
        .values(sequence=BundleState.sequence + 1, updated_at=now)
    )


def _record(
    keystore: KeyStore, database: Database, key: AnyHSMKey, row: Authority, actor: str
) -> Authority:
    """Insert ``row`` (bundle sequence and audit in one transaction) or destroy ``key``."""
    try:
        with database.session() as session:
            session.add(row)
            session.flush()
            bump_bundle_sequence(session, row.created_at)
            audit.append(
                session,
                [
                    audit.Event(
                        f"authority.create.{row.kind.value}",
                        row.kid,
                        actor,
                        detail={"id": row.id, "state": row.state.value, "key_uri": row.key_uri},
                        at=row.created_at,
                    )
                ],
            )
    except IntegrityError:
        keystore.destroy(key.key_id)
        raise AuthorityConflict(
            f"another server created the {row.state.value} {row.kind.value} authority "
            "at the same time"
        ) from None
    except BaseException:
        keystore.destroy(key.key_id)
        raise
    return row


def _ca_row(
    kind: AuthorityKind,
    state: AuthorityState,
    keystore: KeyStore,
    label: str,
    key: AnyHSMKey,
    key_type: KeyType,
    certificate: x509.Certificate,
    now: datetime,
    parent_id: int | None = None,
) -> Authority:
    """The row of a CA authority; its kid is the certificate's SKI."""
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return Authority(
        kind=kind,
        state=state,
        key_uri=keystore.uri_for(label, key.key_id),
        key_type=key_type.value,
        kid=ski.digest.hex(),
        certificate_pem=_pem(certificate),
        public_key_pem=_public_pem(key),
        parent_id=parent_id,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        created_at=now,
        updated_at=now,
    )


def _label(kind: AuthorityKind, now: datetime) -> str:
    return f"idmint-{kind.value}-{now:%Y%m%dT%H%M%S%f}"


def create_root(
    keystore: KeyStore,
    database: Database,
    trust_domain: str,
    key_type: KeyType = KeyType.EC_P256,
    lifetime: timedelta = timedelta(days=365),
    state: AuthorityState = AuthorityState.ACTIVE,
    now: datetime | None = None,
    actor: str = "system",
) -> Authority:
    """Generate a root key in the HSM, self-sign its certificate and record it.

    If recording fails, the new key is destroyed again, so a failed call
    leaves neither a key nor a row behind.
    """
    now = now or datetime.now(UTC)
    label = _label(AuthorityKind.ROOT, now)
    key = keystore.generate(key_type, label)
    try:
        public = key.public_key()
        certificate = root_certificate(public, trust_domain, now, lifetime).sign(
            key, signature_hash(public)
        )
    except BaseException:
        keystore.destroy(key.key_id)
        raise
    row = _ca_row(AuthorityKind.ROOT, state, keystore, label, key, key_type, certificate, now)
    return _record(keystore, database, key, row, actor)


def create_intermediate(
    keystore: KeyStore,
    database: Database,
    trust_domain: str,
    key_type: KeyType = KeyType.EC_P256,
    lifetime: timedelta = timedelta(hours=24),
    state: AuthorityState = AuthorityState.ACTIVE,
    now: datetime | None = None,
    actor: str = "system",
) -> Authority:
    """A new issuing CA signed by the active root, its key in the HSM."""
    now = now or datetime.now(UTC)
    root = active(database, AuthorityKind.ROOT)
    assert root.certificate_pem is not None
    root_certificate_ = x509.load_pem_x509_certificate(root.certificate_pem.encode("ascii"))
    root_key = signing_key(keystore, root)
    label = _label(AuthorityKind.INTERMEDIATE, now)
    key = keystore.generate(key_type, label)
    try:
        public = key.public_key()
        certificate = intermediate_certificate(
            public, root_certificate_, trust_domain, now, now + lifetime
        ).sign(root_key, signature_hash(root_key.public_key()))
    except BaseException:
        keystore.destroy(key.key_id)
        raise
    row = _ca_row(
        AuthorityKind.INTERMEDIATE,
        state,
        keystore,
        label,
        key,
        key_type,
        certificate,
        now,
        parent_id=root.id,
    )
    return _record(keystore, database, key, row, actor)


def create_jwt_authority(
    keystore: KeyStore,
    database: Database,
    algorithm: str = "ES256",
    lifetime: timedelta = timedelta(hours=24),
    state: AuthorityState = AuthorityState.ACTIVE,
    now: datetime | None = None,
    actor: str = "system",
) -> Authority:
    """A new JWT-SVID signing key in the HSM; its kid is the JWK thumbprint."""
    if algorithm not in JWT_KEY_TYPES:
        raise UnsupportedAlgorithm(
            f"JWT-SVID algorithm {algorithm!r} is not supported; use one of "
            f"{', '.join(sorted(JWT_KEY_TYPES))}"
        )
    now = now or datetime.now(UTC)
    key_type = JWT_KEY_TYPES[algorithm]
    label = _label(AuthorityKind.JWT, now)
    key = keystore.generate(key_type, label)
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    row = Authority(
        kind=AuthorityKind.JWT,
        state=state,
        key_uri=keystore.uri_for(label, key.key_id),
        key_type=f"{key_type.value}/{algorithm}",
        kid=jwk_thumbprint_kid(public),
        certificate_pem=None,
        public_key_pem=_public_pem(key),
        not_before=now,
        not_after=now + lifetime,
        created_at=now,
        updated_at=now,
    )
    return _record(keystore, database, key, row, actor)


def jwt_algorithm(authority: Authority) -> str:
    """The JWS algorithm a JWT authority signs with."""
    return authority.key_type.rsplit("/", 1)[-1]


def signing_key(keystore: KeyStore, authority: Authority) -> AnyHSMKey:
    """The HSM private key of ``authority``."""
    key_id = PKCS11URI.parse(authority.key_uri).id
    return keystore.get(key_id=key_id)


def ensure_authorities(
    keystore: KeyStore,
    database: Database,
    trust_domain: str,
    intermediate_key_type: KeyType = KeyType.EC_P256,
    intermediate_lifetime: timedelta = timedelta(hours=24),
    jwt_algorithm_: str = "ES256",
    jwt_lifetime: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> None:
    """Create an active intermediate and JWT authority where none is active.

    Safe to run from every replica at startup: a replica that loses the race
    finds the winner's authority and keeps it.
    """
    now = now or datetime.now(UTC)
    if not authorities(database, AuthorityKind.INTERMEDIATE, AuthorityState.ACTIVE):
        try:
            create_intermediate(
                keystore,
                database,
                trust_domain,
                intermediate_key_type,
                intermediate_lifetime,
                now=now,
            )
        except AuthorityConflict:
            pass  # another replica made it first; its authority serves us too
    if not authorities(database, AuthorityKind.JWT, AuthorityState.ACTIVE):
        try:
            create_jwt_authority(keystore, database, jwt_algorithm_, jwt_lifetime, now=now)
        except AuthorityConflict:
            pass  # likewise


def authorities(
    database: Database, kind: AuthorityKind | None = None, state: AuthorityState | None = None
) -> list[Authority]:
    """Authorities, oldest first, optionally filtered by kind and state."""
    query = select(Authority).order_by(Authority.id)
    if kind is not None:
        query = query.where(Authority.kind == kind)
    if state is not None:
        query = query.where(Authority.state == state)
    with database.session() as session:
        return list(session.scalars(query))


def active(database: Database, kind: AuthorityKind) -> Authority:
    """The one active authority of ``kind``; raise if there is none."""
    found = authorities(database, kind, AuthorityState.ACTIVE)
    if not found:
        raise AuthorityNotFound(f"there is no active {kind.value} authority")
    return found[0]
