"""Proof of possession of a current X509-SVID, without re-attestation: the server's check.

A workload that holds an SVID proves it by signing a statement with the
SVID's key: a fixed context, a purpose, the time, and a digest of what it
asks for (the new CSR, or the request). The CA checks the chain against its
own bundle, the time window, that the certificate is not revoked and its
entry still usable, and spends the signature as a one-time key, so a
captured request replays nowhere. The client's side (making a proof) and
the signed statement's format are in :mod:`idmint.pop`.

Wire form (JSON): ``{"chain": PEM, "timestamp": unix seconds,
"signature": base64}``; the signed bytes are
``b"idmint-pop-v1\\0" + purpose + b"\\0" + str(timestamp) + b"\\0" + sha256(payload)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from idmint.attestation.base import AttestationFailed
from idmint.attestation.x509pop import verify_signature
from idmint.pop import jwt_payload, statement

WINDOW = timedelta(seconds=60)

__all__ = [
    "WINDOW",
    "ProvenSVID",
    "issuer_kid",
    "jwt_payload",
    "statement",
    "verify_proof",
]


@dataclass(frozen=True)
class ProvenSVID:
    spiffe_id: str
    serial: str
    not_after: datetime
    replay_key: tuple[str, datetime]
    #: Hex key identifier of the issuing CA (the leaf's AKI), to check its state.
    issuer_kid: str | None = None
    #: And of the root above it (the intermediate's AKI).
    root_kid: str | None = None


def verify_proof(
    proof: Mapping[str, Any],
    purpose: str,
    payload: bytes,
    roots: Sequence[x509.Certificate],
    now: datetime,
    is_revoked: Callable[[str], bool],
) -> ProvenSVID:
    """Check a proof; raise :class:`AttestationFailed` naming what is wrong."""
    if not isinstance(proof, Mapping):
        raise AttestationFailed("proof must be an object with chain, timestamp and signature")
    chain_pem, timestamp, signature_b64 = (
        proof.get("chain"),
        proof.get("timestamp"),
        proof.get("signature"),
    )
    if not isinstance(chain_pem, str) or not isinstance(signature_b64, str):
        raise AttestationFailed("proof needs 'chain' (PEM) and 'signature' (base64)")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise AttestationFailed("proof needs 'timestamp' (integer unix seconds)")
    # Integers on both sides: a timestamp far outside any float or datetime
    # range must be refused, not crash the subtraction.
    skew = int(now.timestamp()) - timestamp
    if abs(skew) > WINDOW.total_seconds():
        raise AttestationFailed(
            f"proof timestamp is {int(skew)}s off; "
            f"it must be within {int(WINDOW.total_seconds())}s of the server's clock"
        )
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise AttestationFailed(f"proof chain or signature is malformed: {exc}") from None
    if not chain:
        raise AttestationFailed("proof chain is empty")
    leaf = chain[0]
    verify_signature(leaf.public_key(), signature, statement(purpose, timestamp, payload))
    verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_client_verifier()
    try:
        verifier.verify(leaf, chain[1:])
    except VerificationError as exc:
        raise AttestationFailed(f"the SVID does not chain to this trust domain: {exc}") from None
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        raise AttestationFailed("the certificate is not an X509-SVID (one spiffe:// URI SAN)")
    serial = format(leaf.serial_number, "x")
    if is_revoked(serial):
        raise AttestationFailed(f"the SVID with serial {serial} is revoked")
    # The one-time key is what was proven, not the signature bytes: an ECDSA
    # signature (r, s) has a second valid form (r, n - s), so keying on the
    # signature would let a captured proof be replayed once more.
    message = statement(purpose, timestamp, payload)
    proven = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER) + message)
    key = "pop:" + proven.hexdigest()
    root_kid = issuer_kid(chain[1]) if len(chain) > 1 else None
    return ProvenSVID(
        uris[0],
        serial,
        leaf.not_valid_after_utc,
        (key, now + 2 * WINDOW),
        issuer_kid(leaf),
        root_kid,
    )


def issuer_kid(certificate: x509.Certificate) -> str | None:
    """The hex authority key identifier of ``certificate``, if it has a readable one."""
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None
    return aki.key_identifier.hex() if aki.key_identifier else None
