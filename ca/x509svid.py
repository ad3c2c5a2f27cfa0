"""The X509-SVID leaf profile (SPIFFE X509-SVID spec sections 4 and 5, RFC 5280).

Pure: builds a ``CertificateBuilder`` from a public key, names and times the
caller decided; signing happens with the issuing authority's HSM key.
Exactly one URI SAN (the SPIFFE ID), DNS SANs from the entry, cA=false,
critical keyUsage digitalSignature (+ keyEncipherment for RSA keys), EKU
serverAuth + clientAuth, SKI and AKI.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ca.errors import CAError
from ca.profiles import CLOCK_SKEW


class InvalidValidity(CAError):
    """The requested validity window is impossible."""

    code = "invalid-validity"


def svid_window(
    now: datetime, ttl: timedelta, issuer_not_after: datetime, skew: timedelta = CLOCK_SKEW
) -> tuple[datetime, datetime]:
    """(notBefore, notAfter): backdated by ``skew``, capped at the issuer's expiry."""
    return now - skew, min(now + ttl, issuer_not_after)


def _subject(dns_names: Sequence[str]) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idmint")]
    if dns_names:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0]))
    return x509.Name(attributes)


def _usage(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def leaf_certificate(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    spiffe_id: str,
    dns_names: Sequence[str],
    issuer: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
    serial: int,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
) -> x509.CertificateBuilder:
    """The X509-SVID for ``spiffe_id``; the caller has backdated and capped the times."""
    if not_after <= not_before:
        raise InvalidValidity(f"notAfter {not_after} is not after notBefore {not_before}")
    if not_after > issuer.not_valid_after_utc:
        raise InvalidValidity(
            f"notAfter {not_after} is after the issuer's {issuer.not_valid_after_utc}: "
            "an SVID may not outlive its issuer"
        )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names += [x509.DNSName(name) for name in dns_names]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(dns_names))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(public_key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(issuer), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )
    if crl_url:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(crl_url)], None, None, None
                    )
                ]
            ),
            critical=False,
        )
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            ),
            critical=False,
        )
    return builder
