"""The server's writer: one process makes the writes of the issuance path.

Every issuance writes twice: the evidence is spent (a join token marked
used, an OIDC jti or proof stored) before the SVID is signed, and the SVID's
record and audit event are stored after. Made by the server workers
themselves, those writes queued on SQLite's single write turn across
processes, and the thread holding the turn then waited for its own
process's GIL to finish the transaction while every other writer waited
for it (measured: a join token's transaction held the turn ~380 us for
~50 us of work; the recorders of two workers held it ~2.7 ms per batch).
With the writes taken out of the workers, JWT-SVIDs per second through the
server nearly doubled (benchmarks/http.py; the figures are in CHANGELOG.md).

So ``idmint server`` starts this process beside gunicorn, and workers send
it their writes over a Unix socket (``DIR/server/writer.sock``, mode 0600,
peers must be this user or root). It is single-threaded apart from the
recorder's group commit, so no thread of it holds the write turn while
waiting for another; it spends every join token that arrived together in
one transaction. The database stays the single source of truth: spends are
committed before the worker gets its answer, records within the recorder's
20 ms, and PostgreSQL replicas each run their own writer.

Frames are a 4-byte big-endian length and a JSON array:

- ``["consume", token_hash, now]`` -> ``["ok", token_id, spiffe_id]`` or
  ``["refused", "replayed" | "failed", message]``
- ``["spend", [[key, expires_at], ...], now]`` -> ``["ok"]`` or ``["refused", ...]``
- ``["record", credential | null, [[action, subject, actor, outcome, detail, at], ...]]``
  (no answer: issuance does not wait for its record)
- ``["flush"]`` -> ``["ok"]`` once everything recorded before it is committed
  (``["refused", "error", message]`` if the database refused it)

Times are ISO 8601 with an offset.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from idmint.attestation.base import AttestationFailed, EvidenceReplayed
from idmint.ca.errors import WriterUnavailable
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.ledgers import UsedEvidenceLedger, join_token_refusal, spend_join_token
from idmint.ca.storage.models import CredentialKind
from idmint.ca.storage.recorder import write_batch
from idmint.errors import IdmintError

log = logging.getLogger(__name__)

#: No message of this protocol comes near this; a larger length is garbage.
MAX_FRAME = 1 << 20


def _frame(message: Sequence[Any]) -> bytes:
    # default=str: datetimes in audit details become the text the audit log's
    # canonical JSON makes of them anyway, so the chained hash is the same.
    data = json.dumps(message, separators=(",", ":"), default=str).encode()
    return len(data).to_bytes(4, "big") + data


def _encode_record(credential: dict[str, Any] | None, events: Sequence[audit.Event]) -> list[Any]:
    wire: dict[str, Any] | None = None
    if credential is not None:
        wire = dict(credential)
        wire["kind"] = credential["kind"].value
        wire["issued_at"] = credential["issued_at"].isoformat()
        wire["not_after"] = credential["not_after"].isoformat()
    return [
        "record",
        wire,
        [[e.action, e.subject, e.actor, e.outcome, e.detail, e.at.isoformat()] for e in events],
    ]


def _decode_record(
    wire: dict[str, Any] | None, events: list[list[Any]]
) -> tuple[dict[str, Any] | None, list[audit.Event]]:
    credential: dict[str, Any] | None = None
    if wire is not None:
        credential = dict(wire)
        credential["kind"] = CredentialKind(wire["kind"])
        credential["issued_at"] = datetime.fromisoformat(wire["issued_at"])
        credential["not_after"] = datetime.fromisoformat(wire["not_after"])
    decoded = [
        audit.Event(action, subject, actor, outcome, detail, datetime.fromisoformat(at))
        for action, subject, actor, outcome, detail, at in events
    ]
    return credential, decoded


def _refused(error: IdmintError) -> list[str]:
    return ["refused", "replayed" if isinstance(error, EvidenceReplayed) else "failed", str(error)]


# -- the writer process -------------------------------------------------------


class _Peer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.closed = False


def _failed(error: Exception) -> list[str]:
    """An answer for a write the database refused (the worker answers 503)."""
    log.error("writer: the database refused a write: %s", error)
    return ["refused", "error", f"the database refused the write ({type(error).__name__})"]


class WriterServer:
    """Serves the protocol above on ``path`` until ``stop`` is set.

    One thread does everything: spends are answered as they arrive, records
    are buffered and written every ``interval`` (group commit, as the
    in-process :class:`~ca.recorder.Recorder` does). A second thread for the
    records was tried first: the two then handed the GIL and the database
    turn back and forth, and spends waited milliseconds for their answer.
    """

    def __init__(self, database: Database, path: Path, interval: float = 0.02) -> None:
        self.database = database
        self.path = path
        self.interval = interval
        self.used = UsedEvidenceLedger(database)
        self.failures = 0  # batches given up after retries
        self._attempts = 0
        self._pending: list[tuple[dict[str, Any] | None, list[audit.Event]]] = []
        self._next_write = 0.0
        self._selector = selectors.DefaultSelector()

    def listen(self) -> socket.socket:
        """Bind the socket (0600) before anyone is told it exists."""
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        umask = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(umask)
        listener.listen(128)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        return listener

    def serve(self, stop: threading.Event, parent: int | None = None) -> None:
        """Serve until ``stop`` is set or, when ``parent`` is given, that process is gone.

        Watching the parent is what gunicorn's workers do too: a server
        master killed with SIGKILL must not leave its writer running.
        """
        listener = self.listen()
        next_check = 0.0
        try:
            while not stop.is_set():
                if parent is not None and time.monotonic() >= next_check:
                    next_check = time.monotonic() + 0.5
                    if os.getppid() != parent:
                        log.warning("writer: the server (pid %d) is gone; stopping", parent)
                        break
                consumes: list[tuple[_Peer, str, datetime]] = []
                wait = self._next_write - time.monotonic() if self._pending else 0.5
                for key, _ in self._selector.select(timeout=max(wait, 0.0)):
                    if key.data is None:
                        self._accept(listener)
                    else:
                        self._read(key.data, consumes)
                if consumes:
                    self._consume(consumes)
                if self._pending and time.monotonic() >= self._next_write:
                    self._write_records()
            self._drain()
        finally:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
            self.path.unlink(missing_ok=True)
            self._write_records()

    def _write_records(self) -> None:
        """Commit the buffered records; on failure retry next turn, at most 5 times.

        As with the in-process Recorder, a batch the database keeps refusing
        is given up (and logged) rather than holding up every later one.
        """
        if not self._pending:
            return
        self._next_write = time.monotonic() + self.interval
        try:
            with self.database.connection() as connection:
                write_batch(connection, self._pending)
        except Exception:
            self._attempts += 1
            log.exception(
                "writer: recording %d issuances failed (attempt %d)",
                len(self._pending),
                self._attempts,
            )
            if self._attempts < 5:
                return
            self.failures += 1
        self._pending, self._attempts = [], 0

    def _drain(self) -> None:
        """On stop, take in what the (already stopped) workers sent last."""
        for _ in range(1000):
            consumes: list[tuple[_Peer, str, datetime]] = []
            ready = [key for key, _ in self._selector.select(timeout=0) if key.data is not None]
            if not ready:
                return
            for key in ready:
                self._read(key.data, consumes)
            if consumes:
                self._consume(consumes)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", raw)
        if uid not in (0, os.geteuid()):
            log.warning("writer: refused a connection from uid %d", uid)
            sock.close()
            return
        self._selector.register(sock, selectors.EVENT_READ, _Peer(sock))

    def _drop(self, peer: _Peer, why: str | None = None) -> None:
        if peer.closed:
            return  # already dropped earlier in this turn
        if why:
            log.warning("writer: dropped a connection: %s", why)
        peer.closed = True
        self._selector.unregister(peer.sock)
        peer.sock.close()

    def _read(self, peer: _Peer, consumes: list[tuple[_Peer, str, datetime]]) -> None:
        try:
            data = peer.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._drop(peer)
            return
        peer.buffer += data
        while len(peer.buffer) >= 4:
            size = int.from_bytes(peer.buffer[:4], "big")
            if size > MAX_FRAME:
                self._drop(peer, f"a frame of {size} bytes")
                return
            if len(peer.buffer) < 4 + size:
                return
            raw = bytes(peer.buffer[4 : 4 + size])
            del peer.buffer[: 4 + size]
            try:
                self._handle(peer, json.loads(raw), consumes)
            except (ValueError, TypeError, KeyError, IndexError) as error:
                self._drop(peer, f"malformed message ({error})")
                return

    def _handle(
        self, peer: _Peer, message: Any, consumes: list[tuple[_Peer, str, datetime]]
    ) -> None:
        if not isinstance(message, list) or not message:
            raise ValueError("not a JSON array")
        op = message[0]
        if op == "record":
            if not self._pending:
                self._next_write = time.monotonic() + self.interval
            self._pending.append(_decode_record(message[1], message[2]))
        elif op == "consume":
            consumes.append((peer, str(message[1]), datetime.fromisoformat(message[2])))
        elif op == "spend":
            keys = [(str(key), datetime.fromisoformat(exp)) for key, exp in message[1]]
            try:
                self.used.spend(keys, datetime.fromisoformat(message[2]))
                self._answer(peer, ["ok"])
            except IdmintError as error:
                self._answer(peer, _refused(error))
            except Exception as error:  # the database's own failure: keep serving
                self._answer(peer, _failed(error))
        elif op == "flush":
            given_up = self.failures
            self._write_records()
            if self._pending or self.failures != given_up:
                self._answer(peer, ["refused", "error", "the writer could not commit; see its log"])
            else:
                self._answer(peer, ["ok"])
        else:
            raise ValueError(f"unknown operation {op!r}")

    def _consume(self, consumes: list[tuple[_Peer, str, datetime]]) -> None:
        """Every join token that arrived together, spent in one transaction."""
        try:
            with self.database.cursor() as cursor:
                spent = [
                    spend_join_token(self.database, cursor, hashed, now)
                    for _, hashed, now in consumes
                ]
        except Exception as error:  # nothing was spent (rolled back); keep serving
            for peer, _, _ in consumes:
                self._answer(peer, _failed(error))
            return
        for (peer, hashed, _), result in zip(consumes, spent, strict=True):
            if result is not None:
                self._answer(peer, ["ok", *result])
                continue
            try:
                self._answer(peer, _refused(join_token_refusal(self.database, hashed)))
            except Exception as error:
                self._answer(peer, _failed(error))

    def _answer(self, peer: _Peer, message: Sequence[Any]) -> None:
        if peer.closed:
            return
        try:
            peer.sock.sendall(_frame(message))
        except OSError as error:
            self._drop(peer, f"cannot answer ({error})")


# -- the workers' side --------------------------------------------------------

_REFUSALS: dict[str, type[IdmintError]] = {
    "replayed": EvidenceReplayed,
    "failed": AttestationFailed,
}


class WriterClient:
    """A worker's connection to the writer: one socket per thread, opened on first use."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> tuple[socket.socket, Any]:
        found = getattr(self._local, "connection", None)
        if found is not None and found[2] == os.getpid():
            return found[0], found[1]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as error:
            sock.close()
            raise WriterUnavailable(
                f"cannot reach the database writer at {self.path}: {error.strerror or error}"
            ) from None
        self._local.connection = (sock, sock.makefile("rb"), os.getpid())
        return sock, self._local.connection[1]

    def _forget(self) -> None:
        found = getattr(self._local, "connection", None)
        self._local.connection = None
        if found is not None:
            found[1].close()
            found[0].close()

    def _send(self, frame: bytes) -> None:
        # A writer restarted since this thread's last call: reconnect once.
        for attempt in (1, 2):
            sock, _ = self._connection()
            try:
                sock.sendall(frame)
                return
            except OSError as error:
                self._forget()
                if attempt == 2:
                    raise WriterUnavailable(f"the database writer went away ({error})") from None

    def _call(self, message: Sequence[Any]) -> list[Any]:
        self._send(_frame(message))
        _, reader = self._connection()
        try:
            head = reader.read(4)
            body = reader.read(int.from_bytes(head, "big")) if len(head) == 4 else b""
            if not body:
                raise OSError("connection closed")
            answer = json.loads(body)
        except (OSError, ValueError) as error:
            self._forget()
            raise WriterUnavailable(f"no answer from the database writer ({error})") from None
        if answer[0] == "refused":
            kind = _REFUSALS.get(answer[1], WriterUnavailable)
            raise kind(answer[2])
        return list(answer[1:])

    def consume(self, hashed: str, now: datetime) -> tuple[str, str]:
        """The JoinTokenLedger protocol, settled by the writer."""
        token_id, spiffe_id = self._call(["consume", hashed, now.isoformat()])
        return str(token_id), str(spiffe_id)

    def spend(self, keys: Sequence[tuple[str, datetime]], now: datetime) -> None:
        """The UsedEvidenceLedger protocol, settled by the writer."""
        keys = list(keys)
        if keys:
            self._call(["spend", [[k, exp.isoformat()] for k, exp in keys], now.isoformat()])

    def record(self, credential: dict[str, Any] | None, events: Sequence[audit.Event]) -> None:
        """Hand an issuance record to the writer (committed within its group commit)."""
        self._send(_frame(_encode_record(credential, events)))

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything this thread recorded is committed."""
        self._call(["flush"])

    def close(self) -> None:
        self._forget()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ca.writer DATA_DIR SOCKET [--parent PID]``: run until SIGTERM or SIGINT."""
    import argparse
    import signal

    from idmint.ca.config import load

    parser = argparse.ArgumentParser(prog="idmint-writer", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("socket")
    parser.add_argument("--parent", type=int, help="stop when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[idmint-writer %(process)d] %(message)s")
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    database = Database(load(args.data_dir).database_url)
    try:
        WriterServer(database, Path(args.socket)).serve(stop, args.parent)
    finally:
        database.close()


if __name__ == "__main__":
    main()
