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
"""

from __future__ import annotations

import selectors
import ssl
from typing import Any

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


class IdmintThreadWorker(ThreadWorker):
    """gthread with a bounded handshake and new connections parked until they speak."""

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
