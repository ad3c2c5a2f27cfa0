"""Starting ``idmint server`` for a benchmark and waiting until it is ready."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

IDMINT = str(Path(sys.executable).parent / "idmint")


def clean_env() -> dict[str, str]:
    """This environment without idmint or SoftHSM settings (the data dir decides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMINT_")}
    env.pop("SOFTHSM2_CONF", None)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    data: Path, *extra: str, log: Path | None = None, idmint: str = IDMINT
) -> tuple[subprocess.Popen[bytes], int]:
    """``idmint server`` on a free loopback port; returns once /readyz answers 200."""
    port = free_port()
    with log.open("wb") if log else open(os.devnull, "wb") as output:
        server = subprocess.Popen(
            [idmint, "server", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}", *extra],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    wait_ready(server, port, data / "server" / "bundle.pem", "idmint server")
    return server, port


def wait_ready(process: subprocess.Popen[bytes], port: int, bundle: Path, what: str) -> None:
    """Return once ``/readyz`` on ``port`` answers 200 over TLS; kill ``process`` after 60 s."""
    import http.client

    deadline = time.monotonic() + 60
    while True:
        try:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", port, context=ssl.create_default_context(cafile=str(bundle)), timeout=5
            )
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except (OSError, ssl.SSLError):
            pass  # not listening yet
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"{what} did not start")
        time.sleep(0.2)
