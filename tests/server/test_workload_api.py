"""The Python workload API: one call, ready contexts, kept current in the background."""

from __future__ import annotations

import socket
import threading
import time

from cryptography import x509

from idmint.workload import peer_spiffe_id, start
from tests.server.conftest import Server


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
        first_serial = api.svid.serial if api.svid else ""
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
            # The api renews after ~2 s; the same server context then presents the new SVID.
            deadline = time.monotonic() + 15
            while api.svid is not None and api.svid.serial == first_serial:
                assert time.monotonic() < deadline, "the workload never renewed"
                time.sleep(0.2)
        assert served[0] == first_serial and served[1] != first_serial
    finally:
        api.close()
        web.close()
