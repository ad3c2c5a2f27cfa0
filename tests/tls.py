"""Real TLS handshakes over loopback for tests: SPIFFE-style mutual TLS."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID


def self_signed(
    key: Any, common_name: str, lifetime: timedelta = timedelta(hours=1), uri: str | None = None
) -> bytes:
    """A self-signed certificate (PEM) for ``key``; with ``uri``, its own trust anchor
    carrying that URI SAN (an identity for handshake tests, not an SVID)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + lifetime)
    )
    if uri is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def private_pem(key: Any) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def write_svid(directory: Path, name: str, chain_pem: str, key: Any) -> tuple[str, str]:
    """Write chain and key files; return their paths."""
    cert = directory / f"{name}.pem"
    cert.write_text(chain_pem)
    key_path = directory / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert), str(key_path)


def context(side: int, cert: str, key: str, bundle: str) -> ssl.SSLContext:
    """An SSLContext trusting only ``bundle``, presenting ``cert``."""
    made = ssl.SSLContext(side)
    made.minimum_version = ssl.TLSVersion.TLSv1_3
    made.load_cert_chain(cert, key)
    made.load_verify_locations(bundle)
    made.verify_mode = ssl.CERT_REQUIRED
    made.check_hostname = False  # SPIFFE authenticates by URI SAN, checked by the caller
    return made


def peer_spiffe_id(cert: Any) -> str:
    (value,) = [v for k, v in cert["subjectAltName"] if k == "URI"]
    return str(value)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[str, str]:
    """One real handshake; returns (client ID seen by server, server ID seen by client)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, Any] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["client"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["server_error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with client_ctx.wrap_socket(raw) as tls:
                assert tls.recv(2) == b"ok"
                server_cert = tls.getpeercert()
    finally:
        thread.join(timeout=10)
        listener.close()
    if "server_error" in seen:
        raise seen["server_error"]
    return peer_spiffe_id(seen["client"]), peer_spiffe_id(server_cert)
