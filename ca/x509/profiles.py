"""Certificate contents for each authority kind (RFC 5280, SPIFFE X509-SVID).

Pure functions: they build a ``CertificateBuilder`` from public keys and
times, and never touch a token, so they are testable with software keys.
Signing happens elsewhere with an HSM key.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

#: notBefore is backdated this much for clocks that run a little behind.
CLOCK_SKEW = timedelta(seconds=10)

IssuerPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
SignatureHash = hashes.SHA256 | hashes.SHA384


def random_serial() -> int:
    """A positive serial of at most 20 octets with 159 random bits (RFC 5280 4.1.2.2)."""
    return int.from_bytes(os.urandom(20), "big") >> 1 or 1


def signature_hash(public_key: object) -> SignatureHash | None:
    """The digest a key of this type signs certificates with (None for Ed25519)."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return None
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def ca_key_usage(digital_signature: bool) -> x509.KeyUsage:
    """keyCertSign + cRLSign; digitalSignature too where the CA signs OCSP itself."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def ca_name(trust_domain: str, role: str) -> x509.Name:
    """Subject of a CA certificate; a random serialNumber keeps successive CAs distinct."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idmint"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} {role}"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, os.urandom(8).hex()),
        ]
    )


def root_certificate(
    public_key: IssuerPublicKey,
    trust_domain: str,
    not_before: datetime,
    lifetime: timedelta,
) -> x509.CertificateBuilder:
    """A self-signed root CA: URI SAN spiffe://TD, CA critical, keyCertSign+cRLSign critical."""
    name = ca_name(trust_domain, "root CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before - CLOCK_SKEW)
        .not_valid_after(not_before + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ca_key_usage(digital_signature=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
    )


def intermediate_certificate(
    public_key: IssuerPublicKey,
    issuer: x509.Certificate,
    trust_domain: str,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """An issuing CA under ``issuer``: CA with pathLen 0, keyCertSign+cRLSign critical.

    ``not_after`` is capped at the issuer's own expiry: no certificate
    outlives the one that signed it.
    """
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(ca_name(trust_domain, "intermediate CA"))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before - CLOCK_SKEW)
        .not_valid_after(min(not_after, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
    )


def server_certificate(
    public_key: IssuerPublicKey,
    issuer: x509.Certificate,
    dns_names: list[str],
    ip_addresses: list[str],
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """The idmint server's own TLS certificate (serverAuth), issued by its CA."""
    import ipaddress

    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idmint"),
                    x509.NameAttribute(NameOID.COMMON_NAME, (dns_names or ["idmint"])[0]),
                ]
            )
        )
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before - CLOCK_SKEW)
        .not_valid_after(min(not_after, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )
