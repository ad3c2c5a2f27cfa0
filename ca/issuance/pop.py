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
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from idmint.attestation.base import AttestationFailed
from idmint.attestation.x509pop import verify_signature
from idmint.pop import jwt_payload, statement

WINDOW = timedelta(seconds=60)
_SHA256 = hashes.SHA256()

__all__ = [
    "WINDOW",
    "ProvenSVID",
    "issuer_kid",
    "jwt_payload",
    "replay_digest",
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
    checked = _checked_chain(chain_pem, chain, roots, now)
    serial = format(leaf.serial_number, "x")
    if is_revoked(serial):
        raise AttestationFailed(f"the SVID with serial {serial} is revoked")
    key = "pop:" + replay_digest(leaf, statement(purpose, timestamp, payload), signature)
    return ProvenSVID(
        checked.spiffe_id,
        serial,
        leaf.not_valid_after_utc,
        (key, now + 2 * WINDOW),
        checked.issuer_kid,
        checked.root_kid,
    )


@dataclass(frozen=True)
class _CheckedChain:
    leaf: x509.Certificate
    spiffe_id: str
    issuer_kid: str | None
    root_kid: str | None


#: Chains already validated, by (chain PEM, roots): an agent proves the same
#: SVID every second, and path validation (two signature checks and the
#: policy) cost it more than the rest of a sync. Bounded; oldest dropped.
_CHECKED: OrderedDict[tuple[str, tuple[bytes, ...]], _CheckedChain] = OrderedDict()
_CHECKED_MAX = 4096
_CHECKED_LOCK = threading.Lock()


def _checked_chain(
    chain_pem: str,
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> _CheckedChain:
    """``chain`` (leaf first) validated against ``roots``, and its SPIFFE ID; raise if not.

    A cached result is reused only while the leaf is inside its validity at
    ``now`` and for the same roots (a root rotation is another key).
    """
    key = (chain_pem, tuple(root.fingerprint(_SHA256) for root in roots))
    with _CHECKED_LOCK:
        found = _CHECKED.get(key)
        if found is not None:
            _CHECKED.move_to_end(key)
    if (
        found is not None
        and found.leaf.not_valid_before_utc <= now < found.leaf.not_valid_after_utc
    ):
        return found
    leaf = chain[0]
    verifier = PolicyBuilder().store(Store(list(roots))).time(now).build_client_verifier()
    try:
        verifier.verify(leaf, list(chain[1:]))
    except VerificationError as exc:
        raise AttestationFailed(f"the SVID does not chain to this trust domain: {exc}") from None
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        raise AttestationFailed("the certificate is not an X509-SVID (one spiffe:// URI SAN)")
    checked = _CheckedChain(
        leaf, uris[0], issuer_kid(leaf), issuer_kid(chain[1]) if len(chain) > 1 else None
    )
    with _CHECKED_LOCK:
        _CHECKED[key] = checked
        while len(_CHECKED) > _CHECKED_MAX:
            _CHECKED.popitem(last=False)
    return checked


#: Group orders of the curves an SVID key may use (SEC 2, section 2.4).
_ORDERS = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "secp521r1": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}


def replay_digest(leaf: x509.Certificate, message: bytes, signature: bytes) -> str:
    """The once-only key of a proof: the SVID, what it signed, and the signature, canonical.

    Keyed on the signature so that two proofs made separately in the same
    second are two proofs (they used to collide: the timestamp has
    one-second granularity). An ECDSA signature (r, s) has a second valid
    form (r, n - s), so s is taken as the smaller of the two: a captured
    proof re-encoded is still the same proof. RSA PKCS#1 v1.5 signatures
    are deterministic: two proofs of the same request in the same second
    are the same bytes, indistinguishable from a replay, and refused as one.
    """
    canonical = signature
    public_key = leaf.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        order = _ORDERS.get(public_key.curve.name)
        try:
            r, s = decode_dss_signature(signature)
        except ValueError:
            r, s = 0, 0  # verified already; cannot happen
        if order is not None:
            s = min(s, order - s)
        canonical = encode_dss_signature(r, s)
    material = leaf.public_bytes(serialization.Encoding.DER) + message + b"\0" + canonical
    return hashlib.sha256(material).hexdigest()


def issuer_kid(certificate: x509.Certificate) -> str | None:
    """The hex authority key identifier of ``certificate``, if it has a readable one."""
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return None
    return aki.key_identifier.hex() if aki.key_identifier else None
