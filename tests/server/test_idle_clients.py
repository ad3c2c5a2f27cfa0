"""Idle TLS clients cannot stall the server (real gunicorn, real TLS on loopback).

1,000 connections finish their TLS handshake and send nothing. Before, each
held one of the 2 x 4 worker threads until the client left: the ninth
handshake never completed and ``/healthz`` timed out. Now they wait in the
workers' pollers, the server keeps answering, and it closes them once they
have been silent for the first-request timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest

from tests.server.conftest import Server

IDLE = 1000


def _idle_connection(server: Server, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")  # handshake done, no request


@pytest.mark.slow
def test_a_thousand_idle_tls_connections_leave_the_server_answering(server: Server) -> None:
    context = ssl.create_default_context(cafile=server.bundle_file)
    idle: list[ssl.SSLSocket] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def open_some(count: int) -> None:
        for _ in range(count):
            try:
                made = _idle_connection(server, context)
            except (OSError, ssl.SSLError) as error:
                with lock:
                    failures.append(error)
                continue
            with lock:
                idle.append(made)

    openers = [threading.Thread(target=open_some, args=(IDLE // 20,)) for _ in range(20)]
    try:
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
        assert not failures, f"{len(failures)} handshakes failed, e.g. {failures[0]!r}"
        assert len(idle) == IDLE
        # Still answering, while they are open (the client times out at 30 s).
        for _ in range(3):
            status, _, body = server.request("GET", "/healthz")
            assert status == 200, body
        server.x509_by_token("spiffe://example.org/idle/still-served")
        # The silent connections are closed by the server, not kept for ever.
        sample = idle[-20:]
        deadline = time.monotonic() + 30
        for connection in sample:
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert connection.recv(1) == b""
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
                pass  # closed, without or with a TLS close_notify
    finally:
        for connection in idle:
            connection.close()
