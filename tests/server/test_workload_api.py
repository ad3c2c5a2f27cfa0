"""The Python workload API: one call, ready contexts, kept current in the background."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.workload import WorkloadError, from_directory, peer_spiffe_id, start
from tests.server.conftest import Server, clean_env
from tests.tls import private_pem, self_signed


def _serve_once(context: object, port_box: list[int], seen: list[str]) -> threading.Thread:
    import ssl

    assert isinstance(context, ssl.SSLContext)
    listener = socket.create_server(("127.0.0.1", 0))
    port_box.append(listener.getsockname()[1])

    def serve() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            seen.append(peer_spiffe_id(tls))
            tls.sendall(b"hi")
        listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return thread


def test_two_services_authorise_each_other_by_spiffe_id(server: Server) -> None:
    for name in ("api", "web"):
        server.entry(
            f"spiffe://example.org/py/{name}", ["join_token:any:true"], x509_ttl_seconds=60
        )
    api = start(
        server.url,
        server.bundle_file,
        {"type": "join_token", "token": server.join_token("spiffe://example.org/py/api")},
        renew_at=0.03,
    )
    web = start(
        server.url,
        server.bundle_file,
        {"type": "join_token", "token": server.join_token("spiffe://example.org/py/web")},
    )
    try:
        server_ctx, client_ctx = api.server_context(), web.client_context()
        served: list[str] = []
        for _ in range(2):
            seen: list[str] = []
            port: list[int] = []
            thread = _serve_once(server_ctx, port, seen)
            with socket.create_connection(("127.0.0.1", port[0])) as raw:
                with client_ctx.wrap_socket(raw) as tls:
                    assert peer_spiffe_id(tls) == "spiffe://example.org/py/api"
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    served.append(format(x509.load_der_x509_certificate(der).serial_number, "x"))
                    assert tls.recv(2) == b"hi"
            thread.join(timeout=10)
            assert seen == ["spiffe://example.org/py/web"]
            # The api renews after ~2 s (under load it may already have, so the
            # first serial is the one the handshake saw); the same server
            # context then presents the new SVID.
            deadline = time.monotonic() + 15
            while api.svid is not None and api.svid.serial == served[0]:
                assert time.monotonic() < deadline, "the workload never renewed"
                time.sleep(0.2)
        assert served[1] != served[0]
    finally:
        api.close()
        web.close()


def _fetch_into(server: Server, out: Path, spiffe_id: str) -> None:
    """What a helper (``idmint svid x509 --watch``) does on each renewal."""
    subprocess.run(
        server.svid_x509_command(server.join_token(spiffe_id), out),
        check=True,
        capture_output=True,
        env=clean_env(),
    )


def _served_serial(server_ctx: object, client_ctx: object) -> tuple[str, str]:
    """(serial the server side presented, SPIFFE ID it saw) over one real handshake."""
    import ssl

    assert isinstance(client_ctx, ssl.SSLContext)
    seen: list[str] = []
    port: list[int] = []
    thread = _serve_once(server_ctx, port, seen)
    with socket.create_connection(("127.0.0.1", port[0])) as raw:
        with client_ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None and tls.recv(2) == b"hi"
    thread.join(timeout=10)
    return format(x509.load_der_x509_certificate(der).serial_number, "x"), seen[0]


def test_a_service_follows_the_files_a_helper_keeps_current(server: Server, tmp_path: Path) -> None:
    spiffe_id = "spiffe://example.org/py/files"
    server.entry(spiffe_id, ["join_token:any:true"], x509_ttl_seconds=60)
    server.entry("spiffe://example.org/py/caller", ["join_token:any:true"])
    out = tmp_path / "svid"
    _fetch_into(server, out, spiffe_id)
    files = from_directory(out, poll_seconds=0.1)
    caller = start(
        server.url,
        server.bundle_file,
        {"type": "join_token", "token": server.join_token("spiffe://example.org/py/caller")},
    )
    try:
        server_ctx, client_ctx = files.server_context(), caller.client_context()
        first = files.svid
        assert first.spiffe_id == spiffe_id
        assert _served_serial(server_ctx, client_ctx) == (
            first.serial,
            "spiffe://example.org/py/caller",
        )
        _fetch_into(server, out, spiffe_id)  # the helper renews: new key and certificate
        assert files.svid.serial != first.serial
        deadline = time.monotonic() + 10
        while _served_serial(server_ctx, client_ctx)[0] != files.svid.serial:
            assert time.monotonic() < deadline, "the context never picked up the new files"
            time.sleep(0.1)
    finally:
        files.close()
        caller.close()


def test_missing_or_mismatched_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"svid\.pem does not exist.*--watch --out"):
        from_directory(tmp_path)
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "svid.pem").write_bytes(self_signed(key, "x"))
    (tmp_path / "bundle.pem").write_bytes(self_signed(key, "x"))
    (tmp_path / "svid.key").write_bytes(private_pem(other))  # not the certificate's key
    with pytest.raises(WorkloadError, match="do not load"):
        from_directory(tmp_path)
