"""The server's TLS context: built once per worker and certificate, not per connection."""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gunicorn.sock import ssl_context

from cli.server_command import _reused_ssl_context


def _write_pair(directory: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _conf(directory: Path) -> SimpleNamespace:
    # The attributes gunicorn's own factory reads, and our hook in its place.
    return SimpleNamespace(
        certfile=str(directory / "tls.pem"),
        keyfile=str(directory / "tls.key"),
        ca_certs=None,
        cert_reqs=ssl.CERT_NONE,
        ciphers=None,
        http_protocols=None,
        ssl_context=_reused_ssl_context,
    )


def test_one_context_serves_many_connections_until_the_certificate_changes(
    tmp_path: Path,
) -> None:
    _write_pair(tmp_path, "first")
    conf = _conf(tmp_path)
    first = ssl_context(conf)
    assert ssl_context(conf) is first
    assert isinstance(first, ssl.SSLContext)
    _write_pair(tmp_path, "second")  # renewal rewrites the files
    stat = os.stat(tmp_path / "tls.pem")
    os.utime(tmp_path / "tls.pem", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    renewed = ssl_context(conf)
    assert renewed is not first
    assert ssl_context(conf) is renewed
