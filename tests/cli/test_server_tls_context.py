"""The server's TLS context: built once per worker and certificate, not per connection."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric import ec
from gunicorn.sock import ssl_context

from idmint.ca.server.app import reused_ssl_context
from tests.tls import private_pem, self_signed


def _write_pair(directory: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "tls.pem").write_bytes(self_signed(key, name))
    (directory / "tls.key").write_bytes(private_pem(key))


def _conf(directory: Path) -> SimpleNamespace:
    # The attributes gunicorn's own factory reads, and our hook in its place.
    return SimpleNamespace(
        certfile=str(directory / "tls.pem"),
        keyfile=str(directory / "tls.key"),
        ca_certs=None,
        cert_reqs=ssl.CERT_NONE,
        ciphers=None,
        http_protocols=None,
        ssl_context=reused_ssl_context,
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
