"""Checking a workload's certificate signing request (PKCS#10, RFC 2986).

The CSR only proves possession of a key and carries it: the CA decides
every name in the certificate from the registration entry. So a CSR may ask
for nothing, or only for names the entry grants, and never to be a CA.
Accepted keys: EC P-256 and P-384, RSA 2048 to 8192 bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.errors import CAError

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 8192


class InvalidCSR(CAError):
    """The certificate signing request is malformed or asks for what it may not."""

    code = "invalid-csr"


CSRPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class CheckedCSR:
    """A CSR whose signature verified, with the key and the names it requests."""

    public_key: CSRPublicKey
    uris: tuple[str, ...]
    dns_names: tuple[str, ...]
    other_names: tuple[str, ...]


def _load(data: bytes) -> x509.CertificateSigningRequest:
    if not data or not data.strip():
        raise InvalidCSR("the CSR is empty; send a PKCS#10 request in PEM or DER")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise InvalidCSR(f"not a PKCS#10 CSR: {exc}") from None


def _check_key(csr: x509.CertificateSigningRequest) -> CSRPublicKey:
    try:
        key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise InvalidCSR(f"the CSR's public key cannot be read: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise InvalidCSR(
                f"CSR key is EC {key.curve.name}; use EC P-256 or P-384, or RSA >= 2048"
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < RSA_MIN_BITS:
            raise InvalidCSR(
                f"CSR key is RSA {key.key_size} bits; use RSA >= 2048 or EC P-256/P-384"
            )
        if key.key_size > RSA_MAX_BITS:
            raise InvalidCSR(f"CSR key is RSA {key.key_size} bits; at most {RSA_MAX_BITS}")
        return key
    raise InvalidCSR(
        f"CSR key type {type(key).__name__.removeprefix('_')} is not accepted; "
        "use EC P-256/P-384 or RSA >= 2048"
    )


def check_csr(data: bytes) -> CheckedCSR:
    """Parse and verify a CSR; raise :class:`InvalidCSR` naming what is wrong."""
    csr = _load(data)
    key = _check_key(csr)
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidCSR(f"the CSR signature cannot be checked: {exc}") from None
    if not valid:
        raise InvalidCSR("the CSR signature does not verify; it was altered or signed wrongly")
    uris: list[str] = []
    dns: list[str] = []
    other: list[str] = []
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidCSR(f"the CSR's requested extensions are malformed: {exc}") from None
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise InvalidCSR("CSR asks to be a CA; workload certificates are never CAs")
        if isinstance(value, x509.SubjectAlternativeName):
            for name in value:
                if isinstance(name, x509.UniformResourceIdentifier):
                    uris.append(name.value)
                elif isinstance(name, x509.DNSName):
                    dns.append(name.value)
                else:
                    other.append(f"{type(name).__name__}:{name.value}")
    return CheckedCSR(key, tuple(uris), tuple(dns), tuple(other))


def check_requested_names(csr: CheckedCSR, spiffe_id: str, dns_names: Sequence[str]) -> None:
    """Refuse a CSR that asks for a SAN the registration entry does not grant."""
    for uri in csr.uris:
        if uri != spiffe_id:
            raise InvalidCSR(
                f"CSR asks for SAN URI:{uri} that the registration entry does not grant; "
                "the CA sets names from the entry"
            )
    granted = set(dns_names)
    for name in csr.dns_names:
        if name not in granted:
            raise InvalidCSR(
                f"CSR asks for SAN DNS:{name} that the registration entry does not grant; "
                "the CA sets names from the entry"
            )
    if csr.other_names:
        raise InvalidCSR(
            f"CSR asks for SAN {csr.other_names[0]} that the registration entry does not grant; "
            "the CA sets names from the entry"
        )
