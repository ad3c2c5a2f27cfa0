"""The server's own TLS certificate, issued by its CA at start-up.

The key is a software P-256 key in ``DIR/server/tls.key`` (mode 0600): it
protects transport, not identity issuance, and gunicorn needs it as a file.
The chain (server certificate + intermediate) goes to ``DIR/server/tls.pem``
and the bundle to ``DIR/server/bundle.pem``, for clients of the local socket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.ca.authority.authorities import active, signing_key
from idmint.ca.jose.bundle import load_bundle
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuthorityKind
from idmint.ca.x509.profiles import server_certificate, signature_hash
from idmint.hsm import KeyStore


@dataclass(frozen=True)
class ServerTLS:
    certfile: Path
    keyfile: Path
    bundle: Path


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def issue_server_tls(
    keystore: KeyStore,
    database: Database,
    directory: Path,
    dns_names: list[str],
    ip_addresses: list[str],
    trust_domain: str,
) -> ServerTLS:
    """A fresh key and certificate for the server, valid as long as the intermediate."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    intermediate = active(database, AuthorityKind.INTERMEDIATE)
    assert intermediate.certificate_pem is not None
    issuer = x509.load_pem_x509_certificate(intermediate.certificate_pem.encode("ascii"))
    issuer_key = signing_key(keystore, intermediate)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = server_certificate(
        key.public_key(), issuer, dns_names, ip_addresses, now, issuer.not_valid_after_utc
    ).sign(issuer_key, signature_hash(issuer_key.public_key()))
    _record(database, certificate, intermediate.id, trust_domain, now)
    paths = ServerTLS(directory / "tls.pem", directory / "tls.key", directory / "bundle.pem")
    _write_private(
        paths.keyfile,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    chain = certificate.public_bytes(
        serialization.Encoding.PEM
    ) + intermediate.certificate_pem.encode("ascii")
    paths.certfile.write_bytes(chain)
    paths.bundle.write_text(load_bundle(database, trust_domain).pem(), encoding="ascii")
    return paths


def _record(
    database: Database,
    certificate: x509.Certificate,
    authority_id: int,
    trust_domain: str,
    now: datetime,
) -> None:
    """Record and audit the certificate before it is written out (revocable, OCSP ``good``).

    It is no SVID, so no SPIFFE ID of a workload: the row names the server
    itself under the trust domain's reserved ``/idmint/`` path.
    """
    from idmint.ca.storage import audit
    from idmint.ca.storage.models import CredentialKind
    from idmint.ca.storage.recorder import Issuance, Recorder

    serial = format(certificate.serial_number, "x")
    subject = f"spiffe://{trust_domain}/idmint/server-tls"
    not_after = certificate.not_valid_after_utc
    Recorder(database).commit(
        Issuance(
            None,
            {
                "kind": CredentialKind.X509,
                "identifier": serial,
                "spiffe_id": subject,
                "entry_id": None,
                "authority_id": authority_id,
                "issued_at": now,
                "not_after": not_after,
            },
            (
                audit.Event(
                    "server-tls.issue",
                    subject,
                    "server",
                    detail={"serial": serial, "not_after": not_after},
                    at=now,
                ),
            ),
        )
    )
