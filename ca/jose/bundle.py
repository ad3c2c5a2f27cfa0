"""The trust bundle (SPIFFE Trust Domain and Bundle spec, section 4).

Published as PEM (the roots) and as a SPIFFE bundle JWKS: one key per root
with ``use`` ``x509-svid`` and the certificate in ``x5c`` (no kid), one key
per JWT authority with ``use`` ``jwt-svid`` and its ``kid``, plus
``spiffe_sequence`` (raised on every change) and ``spiffe_refresh_hint``.
JWKs are produced by josepy.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import josepy
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from idmint.ca.storage.db import Database
from idmint.ca.storage.models import Authority, AuthorityKind, AuthorityState, BundleState

#: Authorities in these states are published: a prepared one before anything
#: uses it, a retired or tainted one until nothing it signed can still validate.
PUBLISHED_STATES = frozenset(
    {
        AuthorityState.PREPARED,
        AuthorityState.ACTIVE,
        AuthorityState.RETIRED,
        AuthorityState.TAINTED,
    }
)
DEFAULT_REFRESH_HINT = 300


def _jwk(public_key: object) -> dict[str, Any]:
    jwk: josepy.JWK
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = josepy.JWKEC(key=public_key)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jwk = josepy.JWKRSA(key=public_key)
    else:
        raise TypeError(f"no JWK form for {type(public_key).__name__}")
    return dict(jwk.to_partial_json())


@dataclass(frozen=True)
class Bundle:
    """A snapshot of the trust bundle."""

    trust_domain: str
    sequence: int
    roots: tuple[x509.Certificate, ...]
    jwt_keys: tuple[tuple[str, Any, str], ...]  # (kid, public key, JWS alg)
    refresh_hint: int = DEFAULT_REFRESH_HINT

    def pem(self) -> str:
        return "".join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.roots
        )

    def oidc_jwks(self) -> dict[str, Any]:
        """The JWT keys alone, as OIDC consumers expect them (``use: sig``, ``alg``)."""
        return {
            "keys": [
                {**_jwk(public_key), "use": "sig", "kid": kid, "alg": alg}
                for kid, public_key, alg in self.jwt_keys
            ]
        }

    def jwks(self) -> dict[str, Any]:
        keys: list[dict[str, Any]] = []
        for certificate in self.roots:
            der = certificate.public_bytes(serialization.Encoding.DER)
            keys.append(
                {
                    **_jwk(certificate.public_key()),
                    "use": "x509-svid",
                    "x5c": [base64.b64encode(der).decode("ascii")],
                }
            )
        for kid, public_key, _alg in self.jwt_keys:
            keys.append({**_jwk(public_key), "use": "jwt-svid", "kid": kid})
        return {
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint,
        }


def load_bundle(database: Database, trust_domain: str) -> Bundle:
    """Read the published roots and JWT keys and the sequence number."""
    with database.session() as session:
        rows = list(
            session.scalars(
                select(Authority)
                .where(Authority.kind.in_([AuthorityKind.ROOT, AuthorityKind.JWT]))
                .where(Authority.state.in_(list(PUBLISHED_STATES)))
                .order_by(Authority.id)
            )
        )
        sequence = session.scalars(select(BundleState.sequence).where(BundleState.id == 1)).one()
    roots = tuple(
        x509.load_pem_x509_certificate(r.certificate_pem.encode("ascii"))
        for r in rows
        if r.kind is AuthorityKind.ROOT and r.certificate_pem
    )
    jwt_keys = tuple(
        (
            r.kid,
            serialization.load_pem_public_key(r.public_key_pem.encode("ascii")),
            r.key_type.rsplit("/", 1)[-1],
        )
        for r in rows
        if r.kind is AuthorityKind.JWT
    )
    return Bundle(trust_domain=trust_domain, sequence=int(sequence), roots=roots, jwt_keys=jwt_keys)


def bundle_pem(database: Database) -> str:
    """The X.509 bundle as concatenated PEM certificates."""
    return load_bundle(database, "").pem()
