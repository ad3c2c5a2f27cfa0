"""Each response leaves in one write: headers with the first body bytes (ca/server/worker.py).

gunicorn's own request parser and response object, over a SOCK_SEQPACKET
socket pair, which keeps the boundary of every write: so what the client
would get as separate TLS records shows up as separate messages here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import RequestParser, wsgi

from idmint.ca.server.worker import CoalescingResponse
from tests.server.conftest import start_attesting_server, stop_server


def _messages(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    found = []
    while True:
        try:
            found.append(sock.recv(65536))
        except BlockingIOError:
            return found


@pytest.fixture
def exchange() -> Iterator[tuple[socket.socket, ...]]:
    """(client's request end, server's request end, response's socket, client's response end)."""
    client_in, server_in = socket.socketpair()
    server_out, client_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield client_in, server_in, server_out, client_out
    for sock in (client_in, server_in, server_out, client_out):
        sock.close()


def _response(exchange: tuple[socket.socket, ...], request: bytes, coalesce: bool = True) -> Any:
    client_in, server_in, server_out, _ = exchange
    client_in.sendall(request)
    parsed = next(iter(RequestParser(Config(), server_in, ("127.0.0.1", 1))))
    response, _environ = wsgi.create(
        parsed, server_out, ("127.0.0.1", 1), ("127.0.0.1", 2), Config()
    )
    if coalesce:
        response.__class__ = CoalescingResponse
    return response


GET = b"GET /healthz HTTP/1.1\r\nHost: idmint\r\n\r\n"


def test_a_json_answer_is_one_write_and_gunicorn_alone_makes_two(
    exchange: tuple[socket.socket, ...],
) -> None:
    body = b'{"status": "ok"}'
    for coalesce, writes in ((True, 1), (False, 2)):
        response = _response(exchange, GET, coalesce)
        response.start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        response.write(body)
        response.close()
        sent = _messages(exchange[3])
        assert len(sent) == writes, sent
        whole = b"".join(sent)
        assert whole.startswith(b"HTTP/1.1 200 OK\r\n") and whole.endswith(b"\r\n\r\n" + body)
        assert b"Content-Length: 16\r\n" in whole


def test_bodiless_and_chunked_answers_stay_well_formed(exchange: tuple[socket.socket, ...]) -> None:
    response = _response(exchange, GET)
    response.start_response("304 Not Modified", [("ETag", '"abc"')])
    response.close()
    sent = _messages(exchange[3])
    assert len(sent) == 1 and sent[0].startswith(b"HTTP/1.1 304 Not Modified\r\n")
    assert sent[0].endswith(b"\r\n\r\n") and b'ETag: "abc"' in sent[0]

    # No length: HTTP/1.1 chunks; the headers go first, each chunk framed on its own.
    response = _response(exchange, GET)
    response.start_response("200 OK", [("Content-Type", "text/plain")])
    response.write(b"hello ")
    response.write(b"world")
    response.close()
    whole = b"".join(_messages(exchange[3]))
    head, _, chunks = whole.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert chunks == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"


def test_a_real_server_answers_through_it_and_its_workers_warm_up(tmp_path: Path) -> None:
    """Through ``idmint server``: answers arrive whole over TLS, and installing the
    one-write response leaves the worker's app what the warm-up hook opens (it once
    replaced it with a bare function: every worker logged a traceback and warmed
    nothing)."""
    server = start_attesting_server(tmp_path, workers=2)
    try:
        status, headers, body = server.request("GET", "/healthz")
        assert status == 200 and body == {"status": "ok"}, body
        assert int(headers["content-length"]) > 0
        status, headers, _ = server.request("GET", "/v1/bundle", headers={})
        assert status == 200
        deadline = time.monotonic() + 10
        log = (tmp_path / "server.log").read_text()
        while log.count("Booting worker") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            log = (tmp_path / "server.log").read_text()
        time.sleep(1.0)  # the warm-up threads run after boot
        log = (tmp_path / "server.log").read_text()
        assert "could not open the CA state" not in log, log
        assert "Traceback" not in log, log
    finally:
        stop_server(server)
