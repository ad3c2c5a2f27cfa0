"""Proof of possession of a current X509-SVID: the statement and the client's side.

A workload that holds an SVID proves it by signing a statement with the
SVID's key: a fixed context, a purpose, the time, and a digest of what it
asks for (the new CSR, or the request). The server's check lives in
``idmint.ca.issuance.pop``; both build the signed bytes with
:func:`statement`, so the format is defined once.

Wire form (JSON): ``{"chain": PEM, "timestamp": unix seconds,
"signature": base64}``; the signed bytes are
``b"idmint-pop-v1\\0" + purpose + b"\\0" + str(timestamp) + b"\\0" + sha256(payload)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from idmint.client import WorkloadError

CONTEXT = b"idmint-pop-v1\x00"


def statement(purpose: str, timestamp: int, payload: bytes) -> bytes:
    """The bytes a proof signs for ``purpose`` at ``timestamp`` over ``payload``."""
    digest = hashlib.sha256(payload).hexdigest()
    return CONTEXT + f"{purpose}\x00{timestamp}\x00{digest}".encode("ascii")


def make_proof(
    chain_pem: str, private_key: Any, purpose: str, payload: bytes, now: datetime | None = None
) -> dict[str, Any]:
    """A proof object for ``payload``, signed with the SVID's ``private_key``."""
    timestamp = int((now or datetime.now(UTC)).timestamp())
    signature = sign(private_key, statement(purpose, timestamp, payload))
    return {
        "chain": chain_pem,
        "timestamp": timestamp,
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def sign(private_key: Any, message: bytes) -> bytes:
    """ECDSA-SHA256 or RSA PKCS#1 v1.5 SHA-256, the two forms the server verifies."""
    # Imported here: cryptography costs ~30 ms and the CLI's start-up should not pay it.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    raise WorkloadError(f"SVID keys are EC or RSA, not {type(private_key).__name__}")


def jwt_payload(audiences: Sequence[str]) -> bytes:
    """What a JWT-SVID request by proof signs: the audiences, unambiguously."""
    return json.dumps(list(audiences), separators=(",", ":")).encode()
