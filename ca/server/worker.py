"""gunicorn's threaded worker, with idle and slow TLS clients kept off its threads.

gunicorn's gthread worker hands each new connection to a pool thread, which
does the TLS handshake and then blocks reading the first request, with no
time limit. Eight connections that finished their handshake and sent
nothing took all 2 x 4 threads of a server: ``/healthz`` timed out.

Here a pool thread waits only briefly for the client's first bytes and
performs the handshake under a time limit; then, unless the request is
already arriving, the connection goes back to the worker's poller (which
holds thousands of sockets on no thread) until the client sends something,
and is closed if it sends nothing for ``keepalive`` seconds. Connections
between requests already lived in the poller.

Responses go out in one write: gunicorn sends the status line and headers,
then the body, as two ``sendall`` calls, so two TLS records and two system
calls for every small JSON answer (``SSLSocket.send`` was ~13 % of a
worker's busy samples under X509 load). :class:`CoalescingResponse` holds
the headers back and sends them with the first body bytes.
"""

from __future__ import annotations

import selectors
import ssl
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers.gthread import _DEFER, ThreadWorker  # _DEFER: "back to the poller"

#: How long a pool thread waits for a new connection's first bytes (the
#: TLS ClientHello, normally sent with the TCP handshake) before parking it.
FIRST_BYTES_SECONDS = 0.1
#: The TLS handshake must complete within this; a client that stalls in it
#: holds one thread at most this long.
HANDSHAKE_SECONDS = 5.0
#: After the handshake, how long a thread waits for the request to start
#: before parking the connection (clients send it at once).
FIRST_REQUEST_WAIT_SECONDS = 0.05


def _readable(sock: Any, timeout: float) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True  # decrypted bytes already buffered: select would not see them
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(timeout))


class CoalescingResponse(wsgi.Response):
    """gunicorn's response, with the headers sent in the same write as the first body bytes.

    Installed on gunicorn's own response object (its class swapped before the
    app runs), so everything else about it (lengths, keep-alive, HEAD and
    bodiless statuses, chunking) stays gunicorn's.
    """

    _held: bytes = b""

    def send_headers(self) -> None:
        if self.headers_sent:  # type: ignore[has-type]
            return
        tosend = self.default_headers()
        tosend.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        self._held = util.to_bytestring("{}\r\n".format("".join(tosend)), "latin-1")
        self.headers_sent = True

    def _flush_headers(self) -> None:
        held, self._held = self._held, b""
        if held:
            util.write(self.sock, held)

    def _emit_body(self, data: bytes) -> None:
        if self._held and not self.chunked:
            held, self._held = self._held, b""
            util.write(self.sock, held + data)
            return
        self._flush_headers()  # a chunk is framed on its own: headers first
        super()._emit_body(data)

    def sendfile(self, respiter: Any) -> Any:
        # Plain (non-TLS) sockets only: the file goes out by os.sendfile after the headers.
        if self.cfg.is_ssl or not self.can_sendfile():
            return False
        self.send_headers()
        self._flush_headers()
        return super().sendfile(respiter)

    def close(self) -> None:
        # A response without body bytes (304, 204, HEAD, an empty body).
        self.send_headers()
        self._flush_headers()
        super().close()


class IdmintThreadWorker(ThreadWorker):
    """gthread with a bounded handshake, new connections parked until they speak,
    and each response in one write."""

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # Inside the Flask app (its wsgi_app), so the worker's ``wsgi`` stays the
        # app itself: the warm-up hook (ca/server/app.py) opens its context.
        app = self.wsgi
        inner = app.wsgi_app

        def coalescing(environ: dict[str, Any], start_response: Any) -> Any:
            response = getattr(start_response, "__self__", None)
            if type(response) is wsgi.Response:
                response.__class__ = CoalescingResponse
            return inner(environ, start_response)

        app.wsgi_app = coalescing

    def handle(self, conn: Any) -> Any:
        if not conn.initialized:
            if not conn.data_ready and not _readable(conn.sock, FIRST_BYTES_SECONDS):
                return _DEFER
            if self.cfg.is_ssl:
                conn.sock.settimeout(HANDSHAKE_SECONDS)
                try:
                    conn.init()  # wraps the socket and completes the handshake
                except (OSError, ssl.SSLError) as error:  # includes timeouts
                    self.log.debug("TLS handshake failed or timed out: %s", error)
                    return False  # closed by the caller
                conn.sock.settimeout(None)
                # The bytes seen were the handshake's; the request is still to come.
                conn.data_ready = False
                if not _readable(conn.sock, FIRST_REQUEST_WAIT_SECONDS):
                    return _DEFER
                conn.data_ready = True
        return super().handle(conn)
