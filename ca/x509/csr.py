"""Checking a workload's certificate signing request (PKCS#10, RFC 2986).

The CSR proves that the workload holds a private key and carries the public
half (RFC 2986 section 3: the request is signed with that key). Nothing else
in it is trusted: the CA decides every name in the certificate from the
registration entry (SPIFFE X509-SVID section 2: exactly one URI SAN, the
SPIFFE ID). So a CSR may ask for no names or only for names the entry grants,
and never to be a CA (X509-SVID section 4.1: leaves have cA=false).

Accepted keys: EC P-256 and P-384, RSA 2048 to 8192 bits. The requested
extensions are those of the PKCS#9 extensionRequest attribute (RFC 2985
section 5.4.2).

This runs on every issuance, so the request is parsed once, its signature
verified once and its extensions read once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from idmint.ca.errors import InvalidCSR

#: Curves a workload key may use, by OpenSSL name, with the name users know.
CURVES: dict[str, str] = {"secp256r1": "P-256", "secp384r1": "P-384"}
#: Below 2048 bits RSA is breakable in practice (NIST SP 800-131A).
RSA_MIN_BITS = 2048
#: Larger keys buy nothing and make every handshake with this SVID slow.
RSA_MAX_BITS = 8192

CSRPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_KEY_ADVICE = f"use EC P-256/P-384 or RSA {RSA_MIN_BITS}-{RSA_MAX_BITS} bits"
# Names of curves a client might plausibly try, for readable refusals.
_OTHER_CURVES = {"secp192r1": "P-192", "secp224r1": "P-224", "secp521r1": "P-521"}
# The CSR is attacker-controlled input and its text ends up in logs and audit
# events: keep what is echoed bounded and printable.
_MAX_SHOWN = 200


@dataclass(frozen=True, slots=True)
class CheckedCSR:
    """A CSR whose signature verified: its key and the SANs it requests.

    The names are recorded, not approved: :func:`check_requested_names`
    compares them with a registration entry.
    """

    public_key: CSRPublicKey
    #: Requested URI SANs, in the CSR's order.
    uris: tuple[str, ...] = ()
    #: Requested DNS SANs, in the CSR's order.
    dns_names: tuple[str, ...] = ()
    #: Every other requested SAN, described as ``IP:10.0.0.1``, ``email:a@b`` ...
    other_names: tuple[str, ...] = ()
    #: Always False from :func:`check_csr`, which refuses such CSRs; kept so a
    #: hand-made value asking to be a CA is refused by ``check_requested_names``.
    is_ca_requested: bool = False


def check_csr(data: bytes) -> CheckedCSR:
    """Parse a PEM or DER CSR, check its key and signature; raise InvalidCSR if unfit."""
    csr = _parse(data)
    # The key first: an unfit key is refused without spending a verification.
    public_key = _accepted_key(csr)
    _verify_signature(csr)
    return _requested(csr, public_key)


def check_requested_names(csr: CheckedCSR, spiffe_id: str, dns_names: Sequence[str]) -> None:
    """Refuse a CSR asking for any SAN that the registration entry does not grant.

    The entry grants ``spiffe_id`` and ``dns_names``; the CSR may ask for none,
    some or all of them. The certificate gets the entry's names either way.
    """
    if csr.is_ca_requested:
        raise _ca_requested()
    for uri in csr.uris:
        # SPIFFE IDs are canonical strings (SPIFFE-ID section 2): compare exactly.
        if uri != spiffe_id:
            raise _not_granted(f"URI:{uri}")
    if csr.dns_names:
        # DNS names compare case-insensitively (RFC 4343); the certificate
        # carries the entry's spelling, so accepting another case costs nothing.
        granted = {name.lower() for name in dns_names}
        for name in csr.dns_names:
            if name.lower() not in granted:
                raise _not_granted(f"DNS:{name}")
    if csr.other_names:
        raise _not_granted(csr.other_names[0])


def _parse(data: bytes) -> x509.CertificateSigningRequest:
    """Load the request from PEM (recognised by its armour) or DER."""
    if not data.strip():
        raise InvalidCSR(
            "the CSR is empty; send a PKCS#10 request in PEM "
            "('-----BEGIN CERTIFICATE REQUEST-----') or DER"
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as error:
        raise InvalidCSR(
            f"not a PKCS#10 CSR: {_shown(str(error))}; send one PKCS#10 request in PEM or DER"
        ) from None


def _accepted_key(csr: x509.CertificateSigningRequest) -> CSRPublicKey:
    """The CSR's public key, if it is of a type and size workloads may use."""
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise InvalidCSR(f"CSR key cannot be read ({_shown(str(error))}); {_KEY_ADVICE}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = key.curve.name
        if curve not in CURVES:
            shown = _OTHER_CURVES.get(curve)
            described = f"{shown} ({curve})" if shown else curve
            raise InvalidCSR(f"CSR key is EC {described}; {_KEY_ADVICE}")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < RSA_MIN_BITS:
            raise InvalidCSR(
                f"CSR key is RSA {bits} bits; use RSA >= {RSA_MIN_BITS} or EC P-256/P-384"
            )
        if bits > RSA_MAX_BITS:
            raise InvalidCSR(
                f"CSR key is RSA {bits} bits; use RSA <= {RSA_MAX_BITS} or EC P-256/P-384"
            )
        return key
    raise InvalidCSR(f"CSR key is {_key_type(key)}; {_KEY_ADVICE}")


def _key_type(key: object) -> str:
    """The name of a key type that is refused, as users know it."""
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size} bits"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__.removeprefix("_")


def _verify_signature(csr: x509.CertificateSigningRequest) -> None:
    """Refuse a request not signed by the key it carries (no proof of possession).

    A SHA-1 or MD5 signature is refused for its hash first: collisions are
    practical for both, and "does not verify" would send the user looking
    for the wrong mistake.
    """
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None  # the check below names it
    if isinstance(algorithm, hashes.SHA1 | hashes.MD5):
        raise InvalidCSR(
            f"the CSR is signed with {algorithm.name.upper()}, a hash that is not allowed; "
            "sign it with SHA-256 or stronger"
        )
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise InvalidCSR(
            f"CSR signature cannot be checked ({_shown(str(error))}); "
            "sign the request with its own key using ECDSA or RSA with SHA-256 or stronger"
        ) from None
    if not valid:
        raise InvalidCSR(
            "CSR signature does not verify against the CSR's own key; the request was "
            "altered or signed with another key: sign it again with the workload's key"
        )


def _requested(csr: x509.CertificateSigningRequest, public_key: CSRPublicKey) -> CheckedCSR:
    """Read the extension request once: refuse cA=true, record the requested SANs."""
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as error:
        raise InvalidCSR(
            f"CSR's requested extensions are malformed ({_shown(str(error))}); "
            "request no extensions, the CA sets them"
        ) from None
    uris: list[str] = []
    dns_names: list[str] = []
    other_names: list[str] = []
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints):
            if value.ca:
                raise _ca_requested()
        elif isinstance(value, x509.SubjectAlternativeName):
            for name in value:
                if isinstance(name, x509.UniformResourceIdentifier):
                    uris.append(name.value)
                elif isinstance(name, x509.DNSName):
                    dns_names.append(name.value)
                else:
                    other_names.append(_describe(name))
    return CheckedCSR(public_key, tuple(uris), tuple(dns_names), tuple(other_names))


def _describe(name: x509.GeneralName) -> str:
    """A SAN in OpenSSL's notation (``IP:...``, ``email:...``), for messages."""
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"DirName:{name.value.rfc4514_string()}"
    if isinstance(name, x509.RegisteredID):
        return f"RID:{name.value.dotted_string}"
    if isinstance(name, x509.OtherName):
        return f"othername:{name.type_id.dotted_string}"
    return f"{type(name).__name__}:{name.value}"


def _ca_requested() -> InvalidCSR:
    return InvalidCSR(
        "CSR asks to be a CA (basicConstraints cA=true); workload certificates are never "
        "CAs: remove the basicConstraints extension from the request"
    )


def _not_granted(san: str) -> InvalidCSR:
    return InvalidCSR(
        f"CSR asks for SAN {_shown(san)} that the registration entry does not grant; "
        "the CA sets names from the entry: request no SANs or only the entry's"
    )


def _shown(text: str) -> str:
    """``text`` made safe to echo: printable and at most _MAX_SHOWN characters."""
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return text if text.isprintable() else ascii(text)
