"""Authorities: CA and JWT keys in the HSM, their certificates and states.

This module creates the root authority (``idmint init``) and reads the
authorities back. Rotation (prepare, activate, retire) builds on the same
rows in a later step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select

from ca.errors import CAError
from ca.profiles import root_certificate, signature_hash
from ca.storage.db import Database
from ca.storage.models import Authority, AuthorityKind, AuthorityState
from hsm import KeyStore, KeyType


class AuthorityNotFound(CAError):
    """No authority of the requested kind and state exists."""

    code = "authority-not-found"


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


def create_root(
    keystore: KeyStore,
    database: Database,
    trust_domain: str,
    key_type: KeyType = KeyType.EC_P256,
    lifetime: timedelta = timedelta(days=365),
    state: AuthorityState = AuthorityState.ACTIVE,
    now: datetime | None = None,
) -> Authority:
    """Generate a root key in the HSM, self-sign its certificate and record it.

    If recording fails, the new key is destroyed again, so a failed call
    leaves neither a key nor a row behind.
    """
    now = now or datetime.now(UTC)
    label = f"idmint-root-{now:%Y%m%dT%H%M%S%f}"
    key = keystore.generate(key_type, label)
    try:
        public = key.public_key()
        builder = root_certificate(public, trust_domain, now, lifetime)
        certificate = builder.sign(key, signature_hash(public))
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        row = Authority(
            kind=AuthorityKind.ROOT,
            state=state,
            key_uri=keystore.uri_for(label, key.key_id),
            key_type=key_type.value,
            kid=ski.digest.hex(),
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            public_key_pem=public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii"),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            created_at=now,
            updated_at=now,
        )
        with database.session() as session:
            session.add(row)
    except BaseException:
        keystore.destroy(key.key_id)
        raise
    return row


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
