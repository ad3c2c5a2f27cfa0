"""An OCSP responder (RFC 6960), signed in the HSM by the issuing authority.

Answers for certificates of this trust domain's intermediates: ``good``
for a serial issued and not revoked, ``revoked`` with time and reason, and
``unknown`` for a serial never issued here. The issuing CA signs responses
itself (RFC 6960 section 4.2.2.2: no delegated responder certificate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from idmint.ca.revocation.crl import reason_flag
from idmint.ca.x509.profiles import signature_hash

VALIDITY = timedelta(minutes=5)

#: status(serial hex) -> None (never issued), ("good",), or ("revoked", at, reason)
StatusLookup = Callable[[str], tuple[str, datetime | None, str | None] | None]


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def respond(
    request_der: bytes,
    issuers: Sequence[tuple[x509.Certificate, object]],
    lookup: StatusLookup,
    now: datetime,
) -> bytes:
    """A DER OCSP response for ``request_der``."""
    try:
        request = ocsp.load_der_ocsp_request(request_der)
    except ValueError:
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    for issuer, key in issuers:
        name_hash, key_hash = _issuer_hashes(issuer, request.hash_algorithm)
        if request.issuer_key_hash != key_hash or request.issuer_name_hash != name_hash:
            continue
        serial = format(request.serial_number, "x")
        status = lookup(serial)
        if status is None:
            cert_status, revoked_at, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
        elif status[0] == "revoked":
            cert_status, revoked_at = ocsp.OCSPCertStatus.REVOKED, status[1]
            reason = reason_flag(status[2] or "")
        else:
            cert_status, revoked_at, reason = ocsp.OCSPCertStatus.GOOD, None, None
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=name_hash,
                issuer_key_hash=key_hash,
                serial_number=request.serial_number,
                algorithm=request.hash_algorithm,
                cert_status=cert_status,
                this_update=now,
                next_update=now + VALIDITY,
                revocation_time=revoked_at,
                revocation_reason=reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
        )
        nonce = _nonce(request)
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        response = builder.sign(key, signature_hash(issuer.public_key()))  # type: ignore[arg-type]
        return response.public_bytes(serialization.Encoding.DER)
    return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def _issuer_hashes(
    issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    """(name hash, key hash) of ``issuer`` as RFC 6960 4.1.1 defines them.

    The key hash (over the public key's BIT STRING) is cryptography's: it
    computes it when building a request, from the issuer given. The name
    hash is over the issuer's subject DER.
    """
    probe = ocsp.OCSPRequestBuilder().add_certificate(issuer, issuer, algorithm).build()
    digest = hashes.Hash(algorithm)
    digest.update(issuer.subject.public_bytes())
    return digest.finalize(), probe.issuer_key_hash
