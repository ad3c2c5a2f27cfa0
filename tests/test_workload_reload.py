"""SSL contexts that change certificate while connections are being made.

No CA server here: two self-signed SPIFFE-like identities with different
keys, and a directory rewritten between them the way the helper rewrites it
(key, then certificate: a reader between the two sees a mismatched pair).
Every handshake made meanwhile must present a whole identity.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.workload import from_directory
from tests.tls import private_pem, self_signed

pytestmark = pytest.mark.slow  # handshakes during reloads for seconds


def _identity(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    return self_signed(key, name, uri=f"spiffe://t/{name}"), private_pem(key)


def test_handshakes_during_reloads_always_present_a_whole_identity(tmp_path: Path) -> None:
    identities = [_identity("a"), _identity("b")]
    bundle = b"".join(cert for cert, _ in identities)
    directory = tmp_path / "svid"
    directory.mkdir()

    def write(index: int) -> None:
        cert, key = identities[index]
        (directory / "svid.key").write_bytes(key)
        (directory / "svid.pem").write_bytes(cert)

    write(0)
    (directory / "bundle.pem").write_bytes(bundle)
    workload = from_directory(directory, poll_seconds=3600)  # reloads driven below
    server_context = workload.server_context()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cadata=bundle.decode())
    client_pair = identities[1]
    (tmp_path / "client.pem").write_bytes(client_pair[0])
    (tmp_path / "client.key").write_bytes(client_pair[1])
    client.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")

    stop = threading.Event()

    def churn() -> None:
        turn = 0
        while not stop.is_set():
            turn ^= 1
            write(turn)
            try:
                with workload._lock:
                    workload._reload()
            except (ssl.SSLError, OSError):
                pass  # the pair did not match at this instant: the next turn will

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)  # so that serve() sees stop: close() does not wake accept()
    port = listener.getsockname()[1]
    failures: list[str] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"k")
            except (ssl.SSLError, OSError) as error:
                failures.append(f"server: {error}")

    threads = [threading.Thread(target=churn), threading.Thread(target=serve)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                try:
                    with client.wrap_socket(raw) as tls:
                        tls.recv(1)
                except (ssl.SSLError, OSError) as error:
                    failures.append(f"client: {error}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        listener.close()
        workload.close()
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
