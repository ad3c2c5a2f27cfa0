"""The X509-SVID leaf profile (SPIFFE X509-SVID specification, RFC 5280).

Implements standards/X509-SVID.md of github.com/spiffe/spiffe for leaves:
section 2 (exactly one URI SAN, the SPIFFE ID; DNS SANs may follow), 3.1
(a leaf's SPIFFE ID has a path), 4.1 (cA=false), 4.3 (keyUsage critical with
digitalSignature; keyEncipherment only makes sense for RSA keys; never
keyCertSign or cRLSign) and 4.4 (EKU with serverAuth and clientAuth). From
RFC 5280: 4.1.2.2 (serial chosen by the caller, see
``ca.profiles.random_serial``), 4.1.2.5 (validity), 4.2.1.1 and 4.2.1.2 (AKI
and SKI link the leaf to its issuer), 4.2.1.13 (CRL distribution point) and
4.2.2.1 (AIA with the OCSP responder).

Pure: ``leaf_certificate`` builds a ``CertificateBuilder`` from a public key,
names and times the caller decided, reading no clock and touching no token;
the issuing authority signs it with its HSM key.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from idmint.ca.errors import InvalidValidity
from idmint.ca.x509.profiles import CLOCK_SKEW

LeafPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: Organization in every SVID subject, so the subject is never empty (RFC 5280
#: 4.1.2.6 would otherwise require a critical SAN extension).
ORGANIZATION = "idmint"
# X.520 ub-common-name: a longer DNS name is left to the SAN alone.
_MAX_COMMON_NAME = 64
_SPIFFE_PREFIX = "spiffe://"
_EXTENDED_USAGES = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_NOT_A_CA = x509.BasicConstraints(ca=False, path_length=None)


def svid_window(
    now: datetime, ttl: timedelta, issuer_not_after: datetime, skew: timedelta = CLOCK_SKEW
) -> tuple[datetime, datetime]:
    """Return (notBefore, notAfter) for an SVID issued at ``now`` that lives ``ttl``.

    notBefore is backdated by ``skew`` for relying parties whose clocks run a
    little behind; notAfter is capped at the issuer's expiry, because a
    certificate cannot be valid longer than the one that signed it.
    """
    return now - skew, min(now + ttl, issuer_not_after)


def leaf_certificate(
    public_key: LeafPublicKey,
    spiffe_id: str,
    dns_names: Sequence[str],
    issuer: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
    serial: int,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
) -> x509.CertificateBuilder:
    """The unsigned X509-SVID for ``spiffe_id``, issued by ``issuer``.

    ``not_before`` and ``not_after`` are used as given (see :func:`svid_window`);
    a window that is empty or outlives the issuer raises InvalidValidity.
    The CRL distribution point and OCSP AIA are added only when their URL is
    given (None or empty means none).
    """
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise TypeError(
            f"public_key must be an EC or RSA public key, not {type(public_key).__name__}"
        )
    _check_spiffe_id(spiffe_id)
    _check_window(not_before, not_after, issuer.not_valid_after_utc)
    template = _template(
        issuer,
        spiffe_id,
        tuple(dns_names),
        isinstance(public_key, rsa.RSAPublicKey),
        crl_url or None,
        ocsp_url or None,
    )
    return (
        template.public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


@functools.lru_cache(maxsize=1024)
def _template(
    issuer: x509.Certificate,
    spiffe_id: str,
    dns_names: tuple[str, ...],
    rsa_key: bool,
    crl_url: str | None,
    ocsp_url: str | None,
) -> x509.CertificateBuilder:
    """Names and the extensions every leaf of one entry under one issuer shares.

    Builders are immutable, so one can be shared by threads and extended per
    leaf; each ``add_extension`` re-checks all earlier ones for duplicates,
    which made building the same six extensions for every leaf a measurable
    part of an issuance.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(dns_names[0] if dns_names else None))
        .issuer_name(issuer.subject)
        .add_extension(_NOT_A_CA, critical=True)
        .add_extension(_RSA_USAGE if rsa_key else _EC_USAGE, critical=True)
        .add_extension(_EXTENDED_USAGES, critical=False)
        .add_extension(_authority_key_identifier(issuer), critical=False)
        .add_extension(_alternative_names(spiffe_id, dns_names), critical=False)
    )
    if crl_url:
        builder = builder.add_extension(_crl_distribution_points(crl_url), critical=False)
    if ocsp_url:
        builder = builder.add_extension(_ocsp_access(ocsp_url), critical=False)
    return builder


def _check_spiffe_id(spiffe_id: str) -> None:
    """Refuse what cannot be a leaf's SPIFFE ID (X509-SVID 3.1: it has a path).

    Only a cheap structural check: registration entries hold IDs that
    ``SpiffeID.parse`` validated when they were stored.
    """
    if not spiffe_id.startswith(_SPIFFE_PREFIX):
        raise ValueError(f"SPIFFE ID {spiffe_id!r} does not start with {_SPIFFE_PREFIX!r}")
    _, slash, path = spiffe_id[len(_SPIFFE_PREFIX) :].partition("/")
    if not slash or not path:
        raise ValueError(
            f"SPIFFE ID {spiffe_id!r} has no path; a leaf SVID names a workload "
            "(spiffe://<trust-domain>/<path>), never a whole trust domain"
        )


def _check_window(not_before: datetime, not_after: datetime, issuer_not_after: datetime) -> None:
    """Refuse naive times, an empty window, and a window that outlives the issuer."""
    for label, moment in (("not_before", not_before), ("not_after", not_after)):
        # A naive datetime would be read as local time by some and UTC by others.
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"{label} {moment} has no time zone; pass an aware UTC datetime")
    if not_after <= not_before:
        raise InvalidValidity(
            f"notAfter {not_after.isoformat()} is not after notBefore {not_before.isoformat()}; "
            "the SVID would never be valid"
        )
    if not_after > issuer_not_after:
        raise InvalidValidity(
            f"notAfter {not_after.isoformat()} is after the issuer's notAfter "
            f"{issuer_not_after.isoformat()}: an SVID may not outlive its issuer; "
            "cap it with svid_window"
        )


# The values below depend on few inputs and cost microseconds each to build
# (x509.Name and extension objects validate on construction); issuance is a hot
# path, so they are built once and reused. They are immutable.


@functools.lru_cache(maxsize=1024)
def _subject(first_dns_name: str | None) -> x509.Name:
    """O=idmint, plus CN=the first DNS name for clients that still read the CN."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if first_dns_name and len(first_dns_name) <= _MAX_COMMON_NAME:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, first_dns_name))
    return x509.Name(attributes)


def _key_usage(key_encipherment: bool) -> x509.KeyUsage:
    """digitalSignature, and keyEncipherment for RSA keys (TLS 1.2 RSA key exchange)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_EC_USAGE = _key_usage(key_encipherment=False)
_RSA_USAGE = _key_usage(key_encipherment=True)


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The issuer's own SKI (RFC 5280 4.2.1.1), else one derived from its key."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        key = issuer.public_key()
        if not isinstance(
            key,
            ec.EllipticCurvePublicKey
            | rsa.RSAPublicKey
            | dsa.DSAPublicKey
            | ed25519.Ed25519PublicKey
            | ed448.Ed448PublicKey,
        ):
            raise TypeError(f"an issuer key of type {type(key).__name__} cannot sign") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _alternative_names(spiffe_id: str, dns_names: Sequence[str]) -> x509.SubjectAlternativeName:
    """The SPIFFE ID as the one URI SAN, then the DNS names in the entry's order."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names.extend(x509.DNSName(name) for name in dns_names)
    return x509.SubjectAlternativeName(names)


@functools.lru_cache(maxsize=16)
def _crl_distribution_points(crl_url: str) -> x509.CRLDistributionPoints:
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(crl_url)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return x509.CRLDistributionPoints([point])


@functools.lru_cache(maxsize=16)
def _ocsp_access(ocsp_url: str) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            )
        ]
    )
