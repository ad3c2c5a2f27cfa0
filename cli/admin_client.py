"""The admin API over the data directory's Unix socket (TLS, peer credentials).

Commands that change state go through the running server when its socket
exists, so every replica's caches and the audit log see the change the
same way; without a running server they work on the data directory itself.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

from idmint.errors import ClientError

SOCKET = Path("server") / "admin.sock"
BUNDLE = Path("server") / "bundle.pem"


class AdminAPIError(ClientError):
    """The admin API refused the request."""

    code = "admin-api"


class _UnixHTTPS(http.client.HTTPSConnection):
    def __init__(self, path: Path, context: ssl.SSLContext) -> None:
        super().__init__("localhost", context=context, timeout=30)
        self._path = path

    def connect(self) -> None:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(self.timeout)
        raw.connect(str(self._path))
        self.sock = self._context.wrap_socket(raw, server_hostname="localhost")  # type: ignore[attr-defined]


def available(data_dir: Path) -> bool:
    """Whether a server is listening on the data directory's admin socket."""
    path = data_dir / SOCKET
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def call(data_dir: Path, method: str, path: str, body: Any | None = None) -> Any:
    """One admin request; returns the decoded JSON (None for 204)."""
    context = ssl.create_default_context(cafile=str(data_dir / BUNDLE))
    connection = _UnixHTTPS(data_dir / SOCKET, context)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.status >= 400:
        try:
            problem = json.loads(data)
            message = problem.get("detail") or problem.get("title")
        except ValueError:
            message = data.decode(errors="replace")[:300]
        raise AdminAPIError(f"{message} (HTTP {response.status})")
    return json.loads(data) if data else None
