"""``x509pop``: proof of possession of a certificate from a bootstrap CA.

The caller gets a nonce from the server, signs it with the private key of a
certificate issued by a configured bootstrap CA, and sends the chain and the
signature. The nonce is single use (consumed in the database). Selectors:
``x509pop:subject:cn:<CN>``, ``x509pop:san:dns:<name>`` / ``:uri:``, and
``x509pop:ca:fingerprint:<sha256 of the issuing bootstrap CA>``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from idmint.attestation.base import AttestationFailed, Attested, Attestor, register, require

#: What the client signs: a fixed context string and the nonce, so a
#: signature made for something else can never be passed off as this.
CONTEXT = b"idmint x509pop v1\x00"
_NONCE = re.compile(r"[A-Za-z0-9_-]+")


class NonceLedger(Protocol):
    def consume(self, nonce: str, now: datetime) -> None:
        """Use the nonce once; raise AttestationFailed if unknown, used or expired."""
        ...


def signed_message(nonce: str) -> bytes:
    return CONTEXT + nonce.encode("ascii")


def sign_nonce(private_key: Any, nonce: str) -> bytes:
    """The client side: sign the nonce with the bootstrap certificate's key."""
    message = signed_message(nonce)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return bytes(private_key.sign(message, ec.ECDSA(hashes.SHA256())))
    if isinstance(private_key, rsa.RSAPrivateKey):
        return bytes(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256()))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return bytes(private_key.sign(message))
    raise AttestationFailed(f"cannot sign with a {type(private_key).__name__}")


def verify_signature(public_key: Any, signature: bytes, message: bytes) -> None:
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            raise AttestationFailed(f"unsupported key type {type(public_key).__name__}")
    except InvalidSignature:
        raise AttestationFailed(
            "the nonce signature does not verify with the certificate's key"
        ) from None


def _pem_chain(text: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(text.encode("ascii"))
    except ValueError as exc:
        raise AttestationFailed(f"certificate chain is not PEM: {exc}") from None
    if not chain:
        raise AttestationFailed("certificate chain is empty")
    return chain


@register
class X509PoPAttestor(Attestor):
    """Evidence: ``{"type": "x509pop", "nonce", "chain" (PEM), "signature" (base64)}``."""

    type = "x509pop"
    selector_types = ("x509pop",)

    def __init__(self, bootstrap_cas: Sequence[x509.Certificate], nonces: NonceLedger) -> None:
        if not bootstrap_cas:
            raise ValueError("x509pop needs at least one bootstrap CA")
        self.cas = list(bootstrap_cas)
        self.nonces = nonces

    @classmethod
    def from_config(
        cls, table: Mapping[str, Any], base: Path, nonces: NonceLedger
    ) -> X509PoPAttestor:
        path = Path(str(table["ca_bundle"]))
        path = path if path.is_absolute() else base / path
        return cls(x509.load_pem_x509_certificates(path.read_bytes()), nonces)

    def attest(self, evidence: Mapping[str, Any], now: datetime) -> Attested:
        nonce = require(evidence, "nonce")
        if len(nonce) > 128 or not _NONCE.fullmatch(nonce):
            raise AttestationFailed("the nonce is malformed; use the one GET /v1/nonce gave")
        chain = _pem_chain(require(evidence, "chain"))
        try:
            signature = base64.b64decode(require(evidence, "signature"), validate=True)
        except (binascii.Error, ValueError):
            raise AttestationFailed("signature is not base64") from None
        leaf, intermediates = chain[0], chain[1:]
        verify_signature(leaf.public_key(), signature, signed_message(nonce))
        verifier = PolicyBuilder().store(Store(self.cas)).time(now).build_client_verifier()
        try:
            verified = verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise AttestationFailed(
                f"the certificate does not chain to a configured bootstrap CA: {exc}"
            ) from None
        # Only now, with everything else proven, spend the nonce.
        self.nonces.consume(nonce, now)
        anchor = verified.chain[-1]
        selectors = [f"x509pop:ca:fingerprint:{anchor.fingerprint(hashes.SHA256()).hex()}"]
        for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            selectors.append(f"x509pop:subject:cn:{attribute.value!s}")
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            selectors += [f"x509pop:san:dns:{n}" for n in san.get_values_for_type(x509.DNSName)]
            selectors += [
                f"x509pop:san:uri:{u}"
                for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            ]
        except x509.ExtensionNotFound:
            pass  # a bootstrap certificate without SANs yields only CN and CA selectors
        return Attested(
            selectors=tuple(sorted(set(selectors))),
            subject=f"x509pop:{leaf.subject.rfc4514_string()}",
        )
