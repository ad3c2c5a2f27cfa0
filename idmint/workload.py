"""For a service that fetches its own SVID: one call at startup, contexts that stay current.

    from idmint.workload import start

    workload = start("https://idmint:8443", "bundle.pem", {"type": "join_token", "token": T})
    server_ctx = workload.server_context()   # for ssl.wrap_socket / an HTTP server
    client_ctx = workload.client_context()   # for http.client / urllib / requests adapters
    workload.svid.spiffe_id

A background thread renews the SVID by proof of possession half-way through
its life (sooner when the server says so) and loads the new certificate
into the same contexts, so connections made afterwards present it. The
contexts trust the bundle the server returned; roots added to the bundle
later are added to them too (Python's ssl cannot forget a trusted root, so
a removed root stays trusted until the process restarts).

Where a helper already keeps the files current (``idmint svid x509 --watch
--out DIR``, e.g. a sidecar container), a service needs neither evidence nor
a key of its own::

    workload = from_directory("/run/idmint")   # svid.pem, svid.key, bundle.pem
    server_ctx = workload.server_context()

and its contexts follow the files as the helper rewrites them. That path
imports only ``ssl``: cryptography is loaded when a key or CSR is made, or
when ``.svid`` is first read.

Behind a node agent (``idmint agent``), a service needs no evidence at all:
the agent identifies it from the kernel and pushes each renewal::

    workload = from_workload_api()   # SPIFFE_ENDPOINT_SOCKET, or socket="unix:///PATH"
    server_ctx = workload.server_context()

(That one needs the ``[agent]`` extra, for gRPC.)
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from idmint.client import Issued, Server, WorkloadError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography (~30 ms to import) and http.client are imported where they are
# first needed (idmint.client does the same): start-up time is what a service
# pays on every launch, and from_directory() needs neither.

__all__ = [
    "SVID",
    "AgentWorkload",
    "DirectoryWorkload",
    "Workload",
    "WorkloadError",
    "from_directory",
    "from_workload_api",
    "peer_spiffe_id",
    "start",
]


class SVID(NamedTuple):
    """The current X509-SVID of this process."""

    spiffe_id: str
    chain_pem: str
    bundle_pem: str
    expires_at: str
    serial: str


class _Contexts:
    """SSL contexts made from the SVID files in ``_svid_dir``, reloaded together."""

    _svid_dir: Path

    def __init__(self) -> None:
        import weakref

        self._lock = threading.Lock()
        # Weak: a caller that makes a context per connection must not make
        # every renewal reload all the contexts it ever dropped.
        self._contexts: weakref.WeakSet[_ReloadableContext] = weakref.WeakSet()

    def _context(self, side: int) -> ssl.SSLContext:
        context = _new_context(side)
        with self._lock:
            # A helper replaces key and certificate one after the other; a
            # context made between the two would see a mismatched pair.
            for attempt in range(20):
                try:
                    _load(context, self._svid_dir)
                    break
                except ssl.SSLError:
                    if attempt == 19:
                        raise
                    time.sleep(0.05)
            self._contexts.add(context)
        return context

    def _reload(self) -> None:
        """Load the files again into every context (new connections see them).

        The files are copied aside and loaded into a scratch context first,
        so a pair caught mid-rewrite (new certificate, old key) raises here
        and leaves the live contexts as they were.
        """
        live = list(self._contexts)
        if not live:
            return  # at start-up: contexts made later load the files themselves
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="idmint-svid-") as scratch:
            snapshot = Path(scratch)
            for name in _FILES:
                shutil.copyfile(self._svid_dir / name, snapshot / name)
            _load(_new_context(ssl.PROTOCOL_TLS_CLIENT), snapshot)
            for context in live:
                with context.turn:
                    _load(context, snapshot)

    def server_context(self) -> ssl.SSLContext:
        """Presents this SVID and requires a client SVID from the trust bundle."""
        return self._context(ssl.PROTOCOL_TLS_SERVER)

    def client_context(self) -> ssl.SSLContext:
        """Presents this SVID and verifies the server against the trust bundle."""
        return self._context(ssl.PROTOCOL_TLS_CLIENT)


class Workload(_Contexts):
    """An SVID kept current, and SSL contexts that follow it."""

    def __init__(self, server: str, bundle: str, renew_at: float = 0.5) -> None:
        import tempfile

        self._server = Server(server, bundle)
        self.renew_at = renew_at
        super().__init__()
        self._svid_dir = Path(tempfile.mkdtemp(prefix="idmint-workload-"))
        self._key: ec.EllipticCurvePrivateKey | None = None
        self.svid: SVID | None = None
        self._stop = threading.Event()

    def _install(self, issued: Issued) -> None:
        from idmint.client import key_pem

        key, answer = issued
        key_file = self._svid_dir / "svid.key"
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key_pem(key))
        (self._svid_dir / "svid.pem").write_text(answer["chain_pem"])
        (self._svid_dir / "bundle.pem").write_text(answer["bundle_pem"])
        with self._lock:
            self._key = key
            self.svid = SVID(
                answer["spiffe_id"],
                answer["chain_pem"],
                answer["bundle_pem"],
                answer["expires_at"],
                answer["serial"],
            )
            self._reload()

    def attest(self, evidence: dict[str, Any], spiffe_id: str | None = None) -> SVID:
        self._install(self._server.fetch_x509(evidence, spiffe_id))
        assert self.svid is not None
        return self.svid

    def renew(self) -> SVID:
        assert self.svid is not None and self._key is not None
        self._install(self._server.renew_x509(self.svid.chain_pem, self._key))
        return self.svid

    def _due(self) -> float:
        import random

        from cryptography import x509

        assert self.svid is not None
        leaf = x509.load_pem_x509_certificates(self.svid.chain_pem.encode())[0]
        start = leaf.not_valid_before_utc.timestamp()
        life = leaf.not_valid_after_utc.timestamp() - start
        return start + life * self.renew_at + random.uniform(-0.05, 0.05) * life

    def keep_current(self) -> None:
        """Renew in a background thread until :meth:`close`."""

        def loop() -> None:
            import random

            due, backoff = self._due(), 1.0
            while not self._stop.wait(max(0.05, min(5.0, due - time.time()))):
                if time.time() < due:
                    continue
                try:
                    self.renew()
                    due, backoff = self._due(), 1.0
                except WorkloadError:
                    due = time.time() + min(60.0, backoff) * random.uniform(0.5, 1.5)
                    backoff *= 2

        threading.Thread(target=loop, name="idmint-workload", daemon=True).start()

    def close(self) -> None:
        self._stop.set()


class _ReloadableContext(ssl.SSLContext):
    """An SSLContext whose certificate and key are replaced while it is in use.

    Loading a new certificate makes OpenSSL drop a key that does not match
    it, and Python releases the GIL between the certificate and the key: a
    connection created in between got the new certificate with no key, and
    its handshake failed ("no shared cipher", seen during a renewal). So
    creating a connection's SSL object (where OpenSSL copies the context's
    certificate and key) and reloading take turns on ``turn``; handshakes
    themselves run outside it. Every wrap_socket(), later connect() and
    wrap_bio() creates its SSL object through these two methods.
    """

    turn: threading.Lock

    def _wrap_socket(self, *args: Any, **kwargs: Any) -> Any:
        with self.turn:
            return super()._wrap_socket(*args, **kwargs)  # type: ignore[misc]

    def _wrap_bio(self, *args: Any, **kwargs: Any) -> Any:
        with self.turn:
            return super()._wrap_bio(*args, **kwargs)  # type: ignore[misc]


def _new_context(side: int) -> _ReloadableContext:
    context = _ReloadableContext(side)
    context.turn = threading.Lock()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = False  # peers are authorised by SPIFFE ID (peer_spiffe_id)
    return context


def _load(context: ssl.SSLContext, directory: Path) -> None:
    """Present ``directory``'s SVID and trust its bundle (for new connections)."""
    context.load_cert_chain(directory / "svid.pem", directory / "svid.key")
    context.load_verify_locations(str(directory / "bundle.pem"))


_FILES = ("svid.pem", "svid.key", "bundle.pem")


class DirectoryWorkload(_Contexts):
    """SSL contexts that follow the SVID files a helper keeps current."""

    def __init__(self, directory: str | os.PathLike[str], poll_seconds: float = 1.0) -> None:
        super().__init__()
        self._svid_dir = Path(directory)
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._seen = self._stamp()
        self._check_loadable()
        self._svid: tuple[tuple[int, ...], SVID] | None = None
        threading.Thread(target=self._follow, name="idmint-svid-files", daemon=True).start()

    @property
    def directory(self) -> Path:
        """The directory whose files the contexts follow."""
        return self._svid_dir

    def _stamp(self) -> tuple[int, ...]:
        stamp: list[int] = []
        for name in _FILES:
            try:
                found = os.stat(self.directory / name)
            except FileNotFoundError:
                raise WorkloadError(
                    f"{self.directory / name} does not exist; keep the directory current "
                    f"with: idmint svid x509 --watch --out {self.directory} ..."
                ) from None
            stamp += [found.st_mtime_ns, found.st_size, found.st_ino]
        return tuple(stamp)

    def _check_loadable(self) -> None:
        # The helper replaces key and certificate one after the other; a read
        # between the two sees a mismatched pair, so try again briefly.
        for attempt in range(20):
            try:
                _load(_new_context(ssl.PROTOCOL_TLS_CLIENT), self.directory)
                return
            except ssl.SSLError as error:
                if attempt == 19:
                    raise WorkloadError(
                        f"the SVID files in {self.directory} do not load: {error.reason}"
                    ) from None
                time.sleep(0.05)
                self._seen = self._stamp()

    @property
    def svid(self) -> SVID:
        """The SVID the files hold now (parsed on first use after each change)."""
        stamp = self._stamp()
        if self._svid is None or self._svid[0] != stamp:
            chain = (self.directory / "svid.pem").read_text()
            bundle = (self.directory / "bundle.pem").read_text()
            self._svid = (stamp, _svid_of(chain, bundle))
        return self._svid[1]

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                stamp = self._stamp()
                if stamp == self._seen:
                    continue
                with self._lock:
                    self._reload()
                self._seen = stamp
            except (WorkloadError, ssl.SSLError, OSError):
                continue  # mid-rewrite or briefly missing: the next poll sees it whole

    def close(self) -> None:
        self._stop.set()


def _svid_of(chain_pem: str, bundle_pem: str) -> SVID:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    expires = leaf.not_valid_after_utc.isoformat().replace("+00:00", "Z")
    return SVID(uris[0], chain_pem, bundle_pem, expires, format(leaf.serial_number, "x"))


class AgentWorkload(_Contexts):
    """SSL contexts that follow the SVID the local agent pushes on the Workload API.

    Python's ssl loads a certificate and key only from files, so each update
    is written to a private directory (0700, the key 0600) that
    :meth:`close` removes; nothing else of the key leaves this process.
    """

    def __init__(self, socket: str, spiffe_id: str | None = None, wait: float = 30.0) -> None:
        import tempfile

        try:
            from idmint.agent.workload_client import x509_updates
        except ImportError as missing:
            raise WorkloadError(
                f"the Workload API needs the [agent] extra: pip install 'idmint[agent]' ({missing})"
            ) from None
        super().__init__()
        self.socket = socket
        self._svid_dir = Path(tempfile.mkdtemp(prefix="idmint-workload-"))
        self._stop = threading.Event()
        self._first = threading.Event()
        self._failed: Exception | None = None
        self.svid: SVID | None = None
        self._updates = x509_updates(socket, spiffe_id, follow=True)
        threading.Thread(target=self._follow, name="idmint-workload-api", daemon=True).start()
        if not self._first.wait(wait):
            self.close()
            raise WorkloadError(f"no X509-SVID from the agent at {socket} within {wait:g} s")
        if self._failed is not None:
            self.close()
            raise WorkloadError(f"the agent at {socket} gave no X509-SVID: {self._failed}")

    def _follow(self) -> None:
        try:
            for update in self._updates:
                if self._stop.is_set():
                    return
                key_file = self._svid_dir / "svid.key"
                descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(update.key_pem)
                (self._svid_dir / "svid.pem").write_text(update.chain_pem)
                (self._svid_dir / "bundle.pem").write_text(update.bundle_pem)
                with self._lock:
                    self.svid = _svid_of(update.chain_pem, update.bundle_pem)
                    self._reload()
                self._first.set()
        except Exception as error:  # the agent refused (PermissionDenied, ...): say it
            self._failed = error
            self._first.set()

    def close(self) -> None:
        import shutil

        self._stop.set()
        shutil.rmtree(self._svid_dir, ignore_errors=True)


def from_workload_api(
    socket: str | None = None, spiffe_id: str | None = None, wait: float = 30.0
) -> AgentWorkload:
    """Contexts from the local agent's Workload API (``SPIFFE_ENDPOINT_SOCKET`` by default)."""
    address = socket or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if not address:
        raise WorkloadError(
            "no Workload API socket: pass socket= or set SPIFFE_ENDPOINT_SOCKET=unix:///PATH"
        )
    return AgentWorkload(address, spiffe_id, wait)


def from_directory(
    directory: str | os.PathLike[str], poll_seconds: float = 1.0
) -> DirectoryWorkload:
    """Contexts from ``idmint svid x509 --watch --out DIR``'s files, following them."""
    return DirectoryWorkload(directory, poll_seconds)


def peer_spiffe_id(tls: ssl.SSLSocket) -> str:
    """The SPIFFE ID of the peer of a completed handshake (its one URI SAN)."""
    cert: dict[str, Any] = dict(tls.getpeercert() or {})
    names: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())
    uris = [value for kind, value in names if kind == "URI"]
    if len(uris) != 1:
        raise WorkloadError("the peer did not present an X509-SVID")
    return str(uris[0])


def start(
    server: str,
    bundle: str,
    evidence: dict[str, Any],
    spiffe_id: str | None = None,
    renew_at: float = 0.5,
) -> Workload:
    """Attest, get an SVID and keep it current: the one call a service makes at startup."""
    workload = Workload(server, bundle, renew_at)
    workload.attest(evidence, spiffe_id)
    workload.keep_current()
    return workload
