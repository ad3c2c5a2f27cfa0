"""The server's own TLS certificate can be renewed and reloaded without stopping."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.server.conftest import Server

pytestmark = pytest.mark.slow  # renews and reloads the server's TLS certificate


def _served_serial(server: Server) -> int:
    context = ssl.create_default_context(cafile=server.bundle_file)
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_server_tls_renewal_and_reload(server: Server) -> None:
    before = _served_serial(server)
    command = [
        str(Path(sys.executable).parent / "idmint"),
        "server-tls",
        "--data-dir",
        str(server.data_dir),
        "--san",
        "127.0.0.1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    fresh = x509.load_pem_x509_certificate((server.data_dir / "server" / "tls.pem").read_bytes())
    assert fresh.serial_number != before
    server.process.send_signal(signal.SIGHUP)  # what the renewal watcher does
    deadline = time.monotonic() + 30
    while _served_serial(server) != fresh.serial_number:
        assert time.monotonic() < deadline, "workers did not reload the new certificate"
        time.sleep(0.3)
    assert server.request("GET", "/readyz")[0] == 200
