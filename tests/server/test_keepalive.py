"""Kept-alive connections through the real server: requests asked at once, after pauses
(the connection parked in the worker's poller meanwhile), and pipelined (bytes the
parser read ahead) are all answered, in order, on one connection."""

from __future__ import annotations

import socket
import ssl
import time

from tests.server.conftest import Server


def _get(path: str, request_id: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: {request_id}\r\n\r\n"
    ).encode()


def _read_answer(stream: ssl.SSLSocket, buffered: bytearray) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 answer (status, headers) read off ``stream``, body skipped."""
    while b"\r\n\r\n" not in buffered:
        chunk = stream.recv(65536)
        assert chunk, "the server closed the connection"
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = stream.recv(65536)
        assert chunk, "the server closed the connection mid-body"
        rest += chunk
    buffered[:] = rest[length:]
    return int(lines[0].split()[1]), headers


def test_requests_at_once_later_and_pipelined_on_one_connection(server: Server) -> None:
    context = ssl.create_default_context(cafile=server.bundle_file)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as stream:
        buffered = bytearray()
        sent = 0

        def ask(*paths: str) -> None:
            nonlocal sent
            stream.sendall(
                b"".join(_get(path, f"keepalive-{sent + i:06d}") for i, path in enumerate(paths))
            )
            for i, _ in enumerate(paths):
                status, headers = _read_answer(stream, buffered)
                assert status == 200 and headers["x-request-id"] == f"keepalive-{sent + i:06d}"
                assert headers.get("connection", "").lower() != "close", headers
            sent += len(paths)

        for _ in range(50):  # each asked as soon as the last is answered
            ask("/healthz")
        for pause in (0.01, 0.2, 1.0):  # parked in the poller meanwhile
            time.sleep(pause)
            ask("/healthz")
        ask("/healthz", "/v1/bundle", "/healthz")  # pipelined: read ahead in one go
        for _ in range(20):
            ask("/healthz", "/healthz")
        assert sent == 50 + 3 + 3 + 40
