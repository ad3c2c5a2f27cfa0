"""The server's writer: one process makes the writes of the issuance path.

Every issuance writes once: the spend of its single-use evidence (a join
token marked used, an OIDC jti or proof stored), its issued_credentials row
and its audit event, in one transaction, committed before the SVID is
signed (:mod:`idmint.ca.storage.recorder` says why). Made by the server
workers themselves, those writes queued on SQLite's single write turn
across processes, and the thread holding the turn then waited for its own
process's GIL to finish the transaction while every other writer waited
for it (measured: a join token's transaction held the turn ~380 us for
~50 us of work). With the writes taken out of the workers, JWT-SVIDs per
second through the server nearly doubled (benchmarks/http.py; the figures
are in CHANGELOG.md).

So ``idmint server`` starts this process beside gunicorn, and workers send
it their writes over a Unix socket (``DIR/server/writer.sock``, mode 0600,
peers must be this user or root). It is single-threaded, so no thread of it
holds the write turn while waiting for another; everything that arrived
together is committed in one transaction (group commit). The database
stays the single source of truth, and PostgreSQL replicas each run their
own writer.

A database that does not answer (locked by another process, read-only,
gone) fails a transaction within the configured ``[database] timeout``
(default 2 s; the worker answers 503 + Retry-After). From then on, until a
transaction succeeds again, the writer tries one every :data:`PROBE_TIMEOUT`
seconds, letting it wait only that long, and answers the writes in between
at once (503); the first try after the database came back succeeds, so
issuance resumes within ~0.2 s, without a restart.

Frames are a 4-byte big-endian length and a JSON array:

- ``["issue", spend | null, credential | null, [[action, subject, actor, outcome, detail, at],
  ...]]`` -> ``["ok"]`` once committed, or ``["refused", kind, message]``; ``spend`` is
  :meth:`Spend.to_wire`
- ``["consume", token_hash, now]`` -> ``["ok", token_id, spiffe_id]`` or
  ``["refused", "replayed" | "failed", message]``
- ``["spend", [[key, expires_at], ...], now]`` -> ``["ok"]`` or ``["refused", ...]``

``kind`` is ``replayed`` or ``failed`` (the evidence) or ``error`` (the
database: retry). Times are ISO 8601 with an offset.
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
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from idmint.attestation.base import AttestationFailed, EvidenceReplayed
from idmint.ca.errors import WriterUnavailable
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.ledgers import UsedEvidenceLedger, join_token_refusal, spend_join_token
from idmint.ca.storage.models import CredentialKind
from idmint.ca.storage.recorder import Issuance, commit_issuances, refusal
from idmint.ca.storage.spends import Spend
from idmint.errors import IdmintError
from idmint.signals import SignalFlag, Stopping

log = logging.getLogger(__name__)

#: No message of this protocol comes near this; a larger length is garbage.
MAX_FRAME = 1 << 20


#: How long a transaction may wait for the database once one has failed:
#: short, so that requests meanwhile get their 503 at once, and each one
#: tries again, so the first after the database is back succeeds.
PROBE_TIMEOUT = 0.1

#: How long issuances are gathered before they are committed together.
GROUP_WINDOW = 0.002


def _frame(message: Sequence[Any]) -> bytes:
    # default=str: datetimes in audit details become the text the audit log's
    # canonical JSON makes of them anyway, so the chained hash is the same.
    data = json.dumps(message, separators=(",", ":"), default=str).encode()
    return len(data).to_bytes(4, "big") + data


def encode_issuance(item: Issuance) -> list[Any]:
    wire: dict[str, Any] | None = None
    credential = item.credential
    if credential is not None:
        wire = dict(credential)
        wire["kind"] = credential["kind"].value
        wire["issued_at"] = credential["issued_at"].isoformat()
        wire["not_after"] = credential["not_after"].isoformat()
    return [
        "issue",
        None if item.spend is None else item.spend.to_wire(),
        wire,
        [
            [e.action, e.subject, e.actor, e.outcome, e.detail, e.at.isoformat()]
            for e in item.events
        ],
    ]


def decode_issuance(message: list[Any]) -> Issuance:
    _, spend, wire, events = message
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
    return Issuance(None if spend is None else Spend.from_wire(spend), credential, decoded)


def _refused(error: IdmintError) -> list[str]:
    return ["refused", "replayed" if isinstance(error, EvidenceReplayed) else "failed", str(error)]


# -- the writer process -------------------------------------------------------


class _Peer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.closed = False


def _unanswered(error: Exception) -> str:
    return (
        f"the database refused the write or did not answer in time ({type(error).__name__}); "
        "retry shortly"
    )


def _failed(error: Exception) -> list[str]:
    """An answer for a write the database refused (the worker answers 503)."""
    log.error("writer: the database refused a write: %s", error)
    return ["refused", "error", _unanswered(error)]


class _Turn:
    """What arrived in one turn of the loop, to be written together."""

    def __init__(self) -> None:
        self.consumes: list[tuple[_Peer, str, datetime]] = []
        self.issues: list[tuple[_Peer, Issuance]] = []


class WriterServer:
    """Serves the protocol above on ``path`` until ``stop`` is set.

    One thread does everything; every write is answered once committed.
    """

    def __init__(self, database: Database, path: Path) -> None:
        self.database = database
        self.path = path
        self.used = UsedEvidenceLedger(database)
        self._down = False  # the last transaction failed: wait only PROBE_TIMEOUT
        self._next_probe = 0.0  # while down: writes before this are answered at once
        self._down_answer: list[str] = []
        self._grouped: list[tuple[_Peer, Issuance]] = []
        self._group_started = 0.0
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
        listener.listen(512)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        return listener

    def serve(self, stop: Stopping, parent: int | None = None) -> None:
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
                turn = _Turn()
                wait = 0.5
                if self._grouped:
                    wait = max(self._group_started + GROUP_WINDOW - time.monotonic(), 0.0)
                for key, _ in self._selector.select(timeout=wait):
                    if key.data is None:
                        self._accept(listener)
                    else:
                        self._read(key.data, turn)
                self._write(turn)
            self._drain()
            self._issue_grouped(force=True)
        finally:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
            self.path.unlink(missing_ok=True)

    def _timeout(self) -> float | None:
        return PROBE_TIMEOUT if self._down else None

    def _waiting(self) -> list[str] | None:
        """While the database is away, the answer for writes between two probes."""
        if self._down and time.monotonic() < self._next_probe:
            return self._down_answer
        return None

    def _database_failed(self, error: Exception) -> list[str]:
        if not self._down:
            log.error("writer: the database failed (%s); answering 503 until it is back", error)
        self._down = True
        self._next_probe = time.monotonic() + PROBE_TIMEOUT
        self._down_answer = ["refused", "error", _unanswered(error)]
        return self._down_answer

    def _write(self, turn: _Turn) -> None:
        if turn.consumes:
            self._consume(turn.consumes)
        if turn.issues:
            if not self._grouped:
                self._group_started = time.monotonic()
            self._grouped.extend(turn.issues)
        self._issue_grouped()

    def _issue_grouped(self, force: bool = False) -> None:
        """Commit the issuances gathered, once the group window is over.

        The worker signs while its record waits here and is committed (it
        sent the record first and returns the credential only after the
        answer), so the window costs no latency while it is shorter than a
        signature, and every commit carries a few issuances instead of one:
        each commit rewrites the same pages (audit head, indexes) in the WAL.
        """
        if not self._grouped:
            return
        if force or time.monotonic() >= self._group_started + GROUP_WINDOW:
            issues, self._grouped = self._grouped, []
            self._issue(issues)

    def _drain(self) -> None:
        """On stop, answer what the (already stopped) workers sent last."""
        for _ in range(1000):
            turn = _Turn()
            ready = [key for key, _ in self._selector.select(timeout=0) if key.data is not None]
            if not ready:
                return
            for key in ready:
                self._read(key.data, turn)
            self._write(turn)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # everyone waiting (a restart has every worker reconnect)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", raw)
            if uid not in (0, os.geteuid()):
                log.warning("writer: refused a connection from uid %d", uid)
                sock.close()
                continue
            self._selector.register(sock, selectors.EVENT_READ, _Peer(sock))

    def _drop(self, peer: _Peer, why: str | None = None) -> None:
        if peer.closed:
            return  # already dropped earlier in this turn
        if why:
            log.warning("writer: dropped a connection: %s", why)
        peer.closed = True
        self._selector.unregister(peer.sock)
        peer.sock.close()

    def _read(self, peer: _Peer, turn: _Turn) -> None:
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
                self._handle(peer, json.loads(raw), turn)
            except (ValueError, TypeError, KeyError, IndexError, AssertionError) as error:
                self._drop(peer, f"malformed message ({error})")
                return

    def _handle(self, peer: _Peer, message: Any, turn: _Turn) -> None:
        if not isinstance(message, list) or not message:
            raise ValueError("not a JSON array")
        op = message[0]
        if op == "issue":
            turn.issues.append((peer, decode_issuance(message)))
        elif op == "consume":
            turn.consumes.append((peer, str(message[1]), datetime.fromisoformat(message[2])))
        elif op == "spend":
            keys = [(str(key), datetime.fromisoformat(exp)) for key, exp in message[1]]
            waiting = self._waiting()
            if waiting is not None:
                self._answer(peer, waiting)
                return
            try:
                self.used.spend(keys, datetime.fromisoformat(message[2]), self._timeout())
                self._down = False
                self._answer(peer, ["ok"])
            except IdmintError as error:
                self._answer(peer, _refused(error))
            except Exception as error:  # the database's own failure: keep serving
                self._answer(peer, self._database_failed(error))
        else:
            raise ValueError(f"unknown operation {op!r}")

    def _issue(self, issues: list[tuple[_Peer, Issuance]]) -> None:
        """Every issuance that arrived together, spent and recorded in one transaction."""
        waiting = self._waiting()
        if waiting is not None:
            for peer, _ in issues:
                self._answer(peer, waiting)
            return
        items = [item for _, item in issues]
        try:
            with self.database.connection(self._timeout()) as connection:
                outcome = commit_issuances(connection, items)
            self._down = False
        except Exception as error:  # nothing was committed (rolled back); keep serving
            answer = self._database_failed(error)
            for peer, _ in issues:
                self._answer(peer, answer)
            return
        for (peer, item), failed in zip(issues, outcome, strict=True):
            if failed is None:
                self._answer(peer, ["ok"])
                continue
            try:
                self._answer(peer, _refused(refusal(self.database, item, failed)))
            except Exception as error:
                self._answer(peer, _failed(error))

    def _consume(self, consumes: list[tuple[_Peer, str, datetime]]) -> None:
        """Every join token that arrived together, spent in one transaction."""
        waiting = self._waiting()
        if waiting is not None:
            for peer, _, _ in consumes:
                self._answer(peer, waiting)
            return
        try:
            with self.database.cursor(self._timeout()) as cursor:
                spent = [
                    spend_join_token(self.database, cursor, hashed, now)
                    for _, hashed, now in consumes
                ]
            self._down = False
        except Exception as error:  # nothing was spent (rolled back); keep serving
            answer = self._database_failed(error)
            for peer, _, _ in consumes:
                self._answer(peer, answer)
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
    """A worker's connection to the writer: one socket per thread, opened on first use.

    ``timeout`` bounds every call: the writer answers within the database's
    own timeout, so a call that takes longer means a writer that is stuck
    or gone, and the request gets its 503 rather than hanging. A writer
    that is being restarted (its socket missing or refusing) is waited for
    up to ``reconnect`` seconds, so a restart costs the requests that were
    in flight and nothing more.
    """

    def __init__(self, path: Path, timeout: float = 5.0, reconnect: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout
        self.reconnect = reconnect
        self._local = threading.local()

    def _connection(self) -> tuple[socket.socket, Any]:
        found = getattr(self._local, "connection", None)
        if found is not None and found[2] == os.getpid():
            return found[0], found[1]
        deadline = time.monotonic() + self.reconnect
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
                break
            except OSError as error:
                sock.close()
                if time.monotonic() >= deadline:
                    raise WriterUnavailable(
                        f"cannot reach the database writer at {self.path}: "
                        f"{error.strerror or error}"
                    ) from None
                time.sleep(0.02)
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
        # (Sending to a dead peer fails at once, before anything reached it,
        # so sending again to the new writer cannot do a write twice.)
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
        return self._answer()

    def _answer(self) -> list[Any]:
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

    def commit(self, item: Issuance) -> None:
        """The RecordSink protocol: returns once the writer committed ``item``."""
        self._call(encode_issuance(item))

    def begin(self, item: Issuance) -> Callable[[], None]:
        """Send ``item``; the callable returned reads the writer's answer.

        Nothing else may be sent on this thread's connection in between (the
        answers come in order, one per message).
        """
        self._send(_frame(encode_issuance(item)))

        def settle() -> None:
            self._answer()

        return settle

    def begin_many(self, items: Sequence[Issuance]) -> Callable[[], None]:
        """Send every item at once (the writer commits them together); the callable
        reads all the answers, in order, then raises the first refusal if any."""
        self._send(b"".join(_frame(encode_issuance(item)) for item in items))

        def settle() -> None:
            first: IdmintError | None = None
            for _ in items:
                try:
                    self._answer()
                except WriterUnavailable:
                    raise  # the connection is gone: no further answers will come
                except IdmintError as error:
                    first = first or error
            if first is not None:
                raise first

        return settle

    def close(self) -> None:
        self._forget()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m idmint.ca.storage.writer DATA_DIR SOCKET [--parent PID]``: run until SIGTERM."""
    import argparse
    import signal

    from idmint.ca.config import load

    parser = argparse.ArgumentParser(prog="idmint-writer", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("socket")
    parser.add_argument("--parent", type=int, help="stop when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[idmint-writer %(process)d] %(message)s")
    stop = SignalFlag()
    stop.set_on(signal.SIGTERM, signal.SIGINT)
    config = load(args.data_dir)
    database = Database(config.database_url, timeout=config.database_timeout)
    try:
        if take_turn(Path(f"{args.socket}.lock"), stop, args.parent):
            WriterServer(database, Path(args.socket)).serve(stop, args.parent)
    finally:
        database.close()


def take_turn(path: Path, stop: Stopping, parent: int | None) -> bool:
    """Wait to be the one writer: an flock on ``path``, released when its holder dies.

    The server keeps a standby writer started (interpreter up, modules
    imported) waiting here, so when the writer is killed the standby takes
    over within milliseconds instead of the seconds a new interpreter
    takes; workers wait for the socket meanwhile. False if told to stop
    (or the server went away) first.
    """
    import fcntl

    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    while not stop.is_set():
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            log.info("writer: serving (pid %d)", os.getpid())
            return True  # held until this process ends
        except BlockingIOError:
            if parent is not None and os.getppid() != parent:
                return False
            stop.wait(0.01)
    return False


if __name__ == "__main__":
    main()
