"""Certificate revocation lists (RFC 5280 section 5), signed in the HSM.

One CRL per issuing authority, for the serials it issued that are revoked
and not yet expired: a serial leaves the CRL once its certificate expires,
so CRLs stay as small as the credentials are short-lived. The CRL number
is the signing time in milliseconds, so it rises across rebuilds and
replicas without coordination. nextUpdate is a few minutes ahead; callers
cache the DER until then or until a revocation happens.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from idmint.ca.x509.profiles import signature_hash

NEXT_UPDATE = timedelta(minutes=5)
_REASONS = {
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
}


def reason_flag(reason: str) -> x509.ReasonFlags | None:
    return _REASONS.get(reason)


def build_crl(
    issuer: x509.Certificate,
    issuer_key: object,
    revoked: Iterable[tuple[str, datetime, str]],
    now: datetime,
) -> bytes:
    """The DER CRL of ``issuer`` listing ``revoked`` (hex serial, time, reason)."""
    entries = []
    for serial, revoked_at, reason in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(revoked_at)
        )
        flag = reason_flag(reason)
        if flag is not None:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        entries.append(entry.build())
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # All entries handed to the constructor at once: add_revoked_certificate
    # copies the builder each time, which made 100k serials take 11 s.
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject,
        last_update=now,
        next_update=now + NEXT_UPDATE,
        extensions=[
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(int(now.timestamp() * 1000))),
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ),
        ],
        revoked_certificates=entries,
    )
    public = issuer.public_key()
    crl = builder.sign(issuer_key, signature_hash(public))  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.DER)
