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
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from idmint.errors import IdmintError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography (~30 ms to import) and http.client are imported where they are
# first needed: start-up time is what a service pays on every launch, and
# from_directory() needs neither.


class WorkloadError(IdmintError):
    """The server refused or could not be reached."""

    code = "workload-error"


class SVID(NamedTuple):
    """The current X509-SVID of this process."""

    spiffe_id: str
    chain_pem: str
    bundle_pem: str
    expires_at: str
    serial: str


def _key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh P-256 key, made here and never sent, and its CSR (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    return key, csr


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
        from urllib.parse import urlsplit

        parts = urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise WorkloadError(f"server {server!r} is not an https:// URL")
        self._host, self._port = parts.hostname, parts.port or 443
        self._trust = ssl.create_default_context(cafile=bundle)
        self.renew_at = renew_at
        super().__init__()
        self._svid_dir = Path(tempfile.mkdtemp(prefix="idmint-workload-"))
        self._key: ec.EllipticCurvePrivateKey | None = None
        self.svid: SVID | None = None
        self._stop = threading.Event()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import http.client
        import json

        connection = http.client.HTTPSConnection(
            self._host, self._port, context=self._trust, timeout=30
        )
        try:
            connection.request(
                "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            data = json.loads(response.read() or b"{}")
        except (OSError, ValueError) as exc:
            raise WorkloadError(f"cannot reach the idmint server: {exc}") from None
        finally:
            connection.close()
        if response.status >= 400:
            raise WorkloadError(f"{data.get('detail', data)} (HTTP {response.status})")
        result: dict[str, Any] = data
        return result

    def _install(self, key: ec.EllipticCurvePrivateKey, issued: dict[str, Any]) -> None:
        from cryptography.hazmat.primitives import serialization

        key_file = self._svid_dir / "svid.key"
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        (self._svid_dir / "svid.pem").write_text(issued["chain_pem"])
        (self._svid_dir / "bundle.pem").write_text(issued["bundle_pem"])
        with self._lock:
            self._key = key
            self.svid = SVID(
                issued["spiffe_id"],
                issued["chain_pem"],
                issued["bundle_pem"],
                issued["expires_at"],
                issued["serial"],
            )
            self._reload()

    def attest(self, evidence: dict[str, Any], spiffe_id: str | None = None) -> SVID:
        key, csr = _key_and_csr()
        body: dict[str, Any] = {"attestation": evidence, "csr": csr}
        if spiffe_id:
            body["spiffe_id"] = spiffe_id
        self._install(key, self._post("/v1/svid/x509", body))
        assert self.svid is not None
        return self.svid

    def renew(self) -> SVID:
        assert self.svid is not None and self._key is not None
        from idmint.ca.issuance.pop import make_proof

        key, csr = _key_and_csr()

        proof = make_proof(self.svid.chain_pem, self._key, "x509-renew", csr.encode())
        self._install(key, self._post("/v1/svid/x509/renew", {"csr": csr, "proof": proof}))
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
        from cryptography import x509

        stamp = self._stamp()
        if self._svid is None or self._svid[0] != stamp:
            chain = (self.directory / "svid.pem").read_text()
            bundle = (self.directory / "bundle.pem").read_text()
            leaf = x509.load_pem_x509_certificates(chain.encode())[0]
            uris = leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.UniformResourceIdentifier)
            expires = leaf.not_valid_after_utc.isoformat().replace("+00:00", "Z")
            svid = SVID(uris[0], chain, bundle, expires, format(leaf.serial_number, "x"))
            self._svid = (stamp, svid)
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
