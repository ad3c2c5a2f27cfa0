"""The Workload API socket: kernel-verified callers handed to gRPC.

gRPC Python does not expose a connection's socket, so a handler cannot ask
the kernel who is calling (``context.peer()`` is just ``unix:`` for an
unnamed client, and ``auth_context()`` carries no credentials). SPIRE wraps
its listener so that each connection carries its peer credentials; this is
the same idea, built from what Python offers:

1. The agent itself accepts on the public socket (mode 0777: any local user
   may call; identity comes only from the kernel). For each connection it
   reads ``SO_PEERCRED`` and takes a pidfd of the caller
   (:class:`idmint.attestation.unix.Caller`).
2. It opens a connection to the gRPC server, which listens on a socket in a
   private directory (mode 0700, only the agent's user can connect), after
   binding that connection to a fresh path in the same private directory,
   ``c-<n>``. gRPC reports the peer of the call as ``unix:<that path>``.
3. It relays bytes both ways. A handler maps ``context.peer()`` back to the
   :class:`Caller` with :meth:`PeerProxy.caller_for`.

Nobody else can bind in the private directory, so a peer path is always one
of ours; mappings are removed before their path is unlinked, and numbers are
never reused. The relay costs two threads per open connection and one extra
copy of each byte (measured in benchmarks/agent.py against a call without
it).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

from idmint.attestation.base import AttestationFailed
from idmint.attestation.unix import Caller

log = logging.getLogger("idmint.agent")
_BUFFER = 256 * 1024


class PeerProxy:
    """Accepts on ``public_path``; relays to gRPC on a private socket."""

    def __init__(self, public_path: Path) -> None:
        self.public_path = public_path
        self.private_dir = Path(tempfile.mkdtemp(prefix="idmint-agent-"))
        os.chmod(self.private_dir, 0o700)
        self.grpc_path = self.private_dir / "grpc.sock"
        self._callers: dict[str, Caller] = {}
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._listener: socket.socket | None = None
        self._closing = threading.Event()

    @property
    def grpc_address(self) -> str:
        return f"unix:{self.grpc_path}"

    def start(self) -> None:
        self.public_path.parent.mkdir(parents=True, exist_ok=True)
        if self.public_path.is_socket():
            self.public_path.unlink()  # left by an agent that did not stop cleanly
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.public_path))
        # Any local user may call: who they are comes from the kernel, not a secret.
        os.chmod(self.public_path, 0o777)
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, name="idmint-agent-accept", daemon=True).start()

    def stop(self) -> None:
        self._closing.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):  # not connected, or already shut
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        self.public_path.unlink(missing_ok=True)
        shutil.rmtree(self.private_dir, ignore_errors=True)

    def caller_for(self, peer: str) -> Caller | None:
        """The kernel-reported caller behind a gRPC ``context.peer()``."""
        with self._lock:
            return self._callers.get(peer)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                caller = Caller.of(client)
            except (AttestationFailed, OSError) as error:
                log.info("refused a Workload API connection: %s", error)
                client.close()
                continue
            threading.Thread(
                target=self._relay, args=(client, caller), name="idmint-agent-relay", daemon=True
            ).start()

    def _relay(self, client: socket.socket, caller: Caller) -> None:
        path = self.private_dir / f"c-{next(self._numbers)}"
        peer = f"unix:{path}"
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.bind(str(path))
            with self._lock:
                self._callers[peer] = caller
            upstream.connect(str(self.grpc_path))
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()
        except OSError as error:
            log.info("Workload API connection from pid %s ended: %s", caller.pid, error)
        finally:
            with self._lock:
                self._callers.pop(peer, None)
            upstream.close()
            client.close()
            path.unlink(missing_ok=True)
            caller.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    buffer = bytearray(_BUFFER)
    view = memoryview(buffer)
    try:
        while True:
            size = source.recv_into(buffer)
            if not size:
                break
            sink.sendall(view[:size])
    except OSError:
        pass  # the other side went away; the finally below tells the peer
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
