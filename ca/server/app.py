"""The server process: gunicorn (gthread, TLS) with the writer process beside it.

The master process prepares (migrations, authorities, the server's TLS
certificate), then finalises PKCS#11 before gunicorn forks: a module
initialised before ``fork()`` is not usable in the child, so each worker
opens its own sessions on its first request.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from idmint.ca.config import load
from idmint.ca.server.errors import ServerError
from idmint.ca.server.writer_process import WriterProcess


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8443`` for IPv6) as a host and a port number."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ServerError(f"--listen {listen!r} is not HOST:PORT (for example 127.0.0.1:8443)")
    return host.strip("[]"), int(port)


def serve(
    directory: Path,
    listen: str,
    *,
    workers: int,
    threads: int,
    sans: tuple[str, ...] = (),
    tls_cert: str | None = None,
    tls_key: str | None = None,
    rate_limit: str | None = None,
) -> None:
    """Run the server until it is stopped: writer, gunicorn master and workers.

    ``rate_limit`` (``--rate-limit``, deprecated): replaces ``[limits]``
    per_address and per_identity; ``"none"`` turns both off.
    """
    host, port = split_listen(listen)
    config = load(directory)
    if rate_limit is not None:
        config = with_rate_limit(config, rate_limit)
    server_dir = directory / "server"
    # One server per directory, then a free port, both before anything is
    # written: a second `idmint server` with the same --listen is told about
    # the first server, not only that the port is taken.
    lock = hold_server_lock(server_dir) if (server_dir / LOCK_NAME).exists() else None
    check_free(host, port)
    server_dir.mkdir(mode=0o700, exist_ok=True)
    _lock = lock if lock is not None else hold_server_lock(server_dir)  # held until exit
    os.umask(0o077)  # everything this server writes is its user's only
    private_files(directory)
    metrics_dir = server_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(mode=0o700)
    # Before anything imports prometheus_client: workers share metrics through files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from idmint.ca.api.limits import Limiter  # imports prometheus_client: not before

    Limiter(config.limits, config.trust_domain)  # a bad [limits] fails here, not in each worker
    if config.issuer_url == "https://127.0.0.1:8443" and listen != "127.0.0.1:8443":
        from dataclasses import replace

        config = replace(config, issuer_url=f"https://{listen}")

    names = [host, *sans]
    if tls_cert and tls_key:
        certfile, keyfile = Path(tls_cert), Path(tls_key)
        prepare(config, None, [])
    else:
        certfile, keyfile = prepare(config, server_dir, names)

    socket_path = server_dir / "admin.sock"
    socket_path.unlink(missing_ok=True)
    writer = WriterProcess(directory, server_dir / "writer.sock")
    writer.start()
    from idmint.ca.server.worker import IdmintThreadWorker

    options = {
        # The master binds only the admin socket; each worker binds the HTTPS
        # port itself (see _bind_own_listener).
        "bind": [f"unix:{socket_path}"],
        # gunicorn's own control socket (gunicornc) defaults to one path per
        # user ($HOME/.gunicorn/gunicorn.ctl), which a second server of the
        # same user would take over: keep it with this server's data.
        "control_socket": str(server_dir / "gunicorn.ctl"),
        "control_socket_mode": 0o600,
        "post_fork": lambda _arbiter, worker: _bind_own_listener(worker, host, port),
        "post_worker_init": _warm_worker,
        "workers": workers,
        "threads": threads,
        # gthread, with new connections kept off its threads until they
        # send a request (ca/server/worker.py says why).
        "worker_class": IdmintThreadWorker,
        # Idle kept-alive connections, and new ones that finished their TLS
        # handshake but sent no request yet, are closed after this long.
        "keepalive": 5,
        "certfile": str(certfile),
        "keyfile": str(keyfile),
        # The app logs one structured line per request (ca/api/observe.py).
        "accesslog": None,
        "errorlog": "-",
        "loglevel": str((config.extra.get("log") or {}).get("level", "info")),
        "timeout": 60,
        "graceful_timeout": 10,
        "limit_request_line": 8190,
        "limit_request_field_size": 16384,
        "ssl_context": reused_ssl_context,
        "when_ready": lambda arbiter: _when_ready(
            arbiter, socket_path, directory, names, not (tls_cert and tls_key), writer
        ),
    }
    print(
        f"idmint serving {config.trust_domain} on https://{listen} "
        f"(admin socket {socket_path}), {workers} workers x {threads} threads",
        file=sys.stderr,
    )
    try:
        _Gunicorn(config, str(writer.path), options, writer).run()
    finally:
        writer.stop()  # after the workers: it commits what they sent last


def with_rate_limit(config: Any, rate_limit: str) -> Any:
    """``config`` with ``--rate-limit`` as its per-address and per-identity rules."""
    from dataclasses import replace

    return replace(config, limits=config.limits.with_rate_limit(rate_limit))


LOCK_NAME = "server.lock"


def private_files(directory: Path) -> None:
    """The database (with its -wal and -shm) and the configuration: 0600.

    SQLite gives -wal and -shm the database file's mode when it makes them.
    """
    from idmint.ca.config import CONFIG_NAME, DATABASE_NAME

    for name in (CONFIG_NAME, DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm"):
        path = directory / name
        if path.exists():
            path.chmod(0o600)


def hold_server_lock(server_dir: Path) -> int:
    """One server per data directory: an flock on DIR/server/server.lock, or ServerError.

    Taken before anything in the directory is touched (admin.sock,
    writer.sock, the TLS files): a second server replacing them left the
    first answering 503 for good. The kernel releases the lock when the
    process ends, however it ends, so a crashed server never blocks the
    next one. The file holds the holder's PID, for the message.
    """
    import fcntl

    path = server_dir / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        raise ServerError(
            f"another idmint server (pid {holder}) is running on {server_dir.parent}; "
            "stop it first, or use another --data-dir"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
    return descriptor


def prepare(config: Any, server_dir: Path | None, names: list[str]) -> tuple[Path, Path]:
    """Migrations, authorities and (when ``server_dir``) a fresh TLS certificate.

    PKCS#11 is finalised afterwards: gunicorn forks next, and a module
    initialised before ``fork()`` is unusable in the children.
    """
    import ipaddress

    from idmint.ca.authority.server_tls import issue_server_tls
    from idmint.ca.service import CAService
    from idmint.hsm import module as modules

    service = CAService.open(config)
    try:
        if server_dir is None:
            return Path(), Path()
        dns, ips = ["localhost"], ["127.0.0.1", "::1"]
        for name in names:
            try:
                ipaddress.ip_address(name)
                ips.append(name)
            except ValueError:
                dns.append(name)
        paths = issue_server_tls(
            service.keystore,
            service.database,
            server_dir,
            sorted(set(dns)),
            sorted(set(ips)),
            config.trust_domain,
        )
        return paths.certfile, paths.keyfile
    finally:
        service.close()
        modules.finalize_all()


def check_free(host: str, port: int) -> None:
    """Refuse a port something already listens on.

    Workers bind with SO_REUSEPORT, which would otherwise let a second
    idmint server (same user) share the port with the first and split its
    traffic between two CAs. A plain bind fails if anyone listens.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ServerError(
                f"cannot listen on {host}:{port}: {error.strerror} "
                "(is another server running? choose another --listen)"
            ) from None


def _bind_own_listener(worker: Any, host: str, port: int) -> None:
    """gunicorn ``post_fork`` hook: this worker's own listening socket.

    With one socket shared by all workers, whichever worker wakes first
    accepts, and a client with few long-lived connections (a proxy, a load
    generator) can land almost all of them on one worker: measured, 16
    keep-alive connections served 2,200 or 6,500 requests/s on /healthz
    depending on the split. With SO_REUSEPORT each worker has its own
    socket and the kernel spreads new connections across them by hash.
    (gunicorn's own ``reuse_port`` would do this for the admin socket too,
    re-creating it in every worker; it stays one socket in the master.)
    """
    import socket

    from gunicorn.sock import TCP6Socket, TCPSocket

    kind = TCP6Socket if ":" in host else TCPSocket
    raw = socket.socket(kind.FAMILY, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    raw.bind((host, port))
    listener = kind((host, port), worker.cfg, worker.log, fd=raw.detach())
    worker.sockets = [*worker.sockets, listener]
    # gunicorn's own "Listening at" line names only the master's admin socket.
    worker.log.info(
        "Listening at: %s (worker %s, its own SO_REUSEPORT socket)", listener, os.getpid()
    )


def _warm_worker(worker: Any) -> None:
    """gunicorn ``post_worker_init`` hook: open the CA state and read the entries now.

    Otherwise the first request of each worker waits for it (seconds with
    100,000 entries), and a worker that never served ``/readyz`` first
    makes a caller wait after the server said it was ready.
    """
    import gc
    import threading

    app = worker.wsgi

    def warm() -> None:
        from idmint.ca.api.context import state

        try:
            with app.app_context():
                state().service.issuer.state()
        except Exception:  # the first request retries and reports it
            worker.log.exception("could not open the CA state ahead of requests")
            return
        gc.freeze()  # the entry index lives as long as the worker (see context.py)

    threading.Thread(target=warm, name="idmint-warm", daemon=True).start()


_ssl_contexts: dict[tuple[int, int, int], Any] = {}


def reused_ssl_context(conf: Any, default_factory: Any) -> Any:
    """gunicorn's ``ssl_context`` hook: one context per worker and certificate.

    gunicorn calls the factory for every connection, which re-reads the
    certificate and key from disk (measured: 2-3.5 ms of each 4.5 ms TLS
    connect on loopback). A context is reusable across connections; it is
    rebuilt when the certificate file changes (renewal) or in a new worker.
    """
    stat = os.stat(conf.certfile)
    key = (os.getpid(), stat.st_mtime_ns, stat.st_size)
    context = _ssl_contexts.get(key)
    if context is None:
        _ssl_contexts.clear()
        context = _ssl_contexts[key] = default_factory()
    return context


#: Renew the server's own certificate when less than this is left; it lives
#: as long as the intermediate that signed it (24 h by default).
TLS_RENEW_BEFORE_SECONDS = 8 * 3600
TLS_CHECK_SECONDS = 300


def _when_ready(
    arbiter: Any,
    socket_path: Path,
    directory: Path,
    names: list[str],
    own_tls: bool,
    writer: WriterProcess,
) -> None:
    """Master hook: lock down the admin socket, watch the writer, keep the TLS certificate fresh.

    Renewal runs ``idmint server-tls`` in a subprocess (the master must not
    touch PKCS#11, or forked workers inherit a broken module) and then sends
    the master SIGHUP, which starts workers with the new certificate and
    retires the old ones gracefully.
    """
    import signal
    import subprocess
    import sys
    import threading
    import time

    from cryptography import x509

    socket_path.chmod(0o600)
    writer.watch(arbiter)
    if not own_tls:
        return
    certfile = directory / "server" / "tls.pem"

    def watch() -> None:
        while True:
            time.sleep(TLS_CHECK_SECONDS)
            try:
                leaf = x509.load_pem_x509_certificate(certfile.read_bytes())
                left = leaf.not_valid_after_utc.timestamp() - time.time()
                if left > TLS_RENEW_BEFORE_SECONDS:
                    continue
                command = [
                    sys.executable,
                    "-m",
                    "idmint.cli.main",
                    "server-tls",
                    "--data-dir",
                    str(directory),
                ]
                for name in names:
                    command += ["--san", name]
                subprocess.run(command, check=True, capture_output=True, timeout=120)
                arbiter.log.info("renewed the server TLS certificate; reloading workers")
                os.kill(os.getpid(), signal.SIGHUP)
            except Exception as exc:  # keep watching; log why
                arbiter.log.error("server TLS renewal failed: %s", exc)

    threading.Thread(target=watch, name="idmint-tls-renewal", daemon=True).start()


def _gunicorn_base() -> Any:
    from gunicorn.app.base import BaseApplication

    return BaseApplication


class _Gunicorn(_gunicorn_base()):  # type: ignore[misc]
    """gunicorn with our options and the Flask app made in each worker."""

    def __init__(
        self, config: Any, writer_socket: str, options: dict[str, Any], writer: WriterProcess
    ) -> None:
        self._config = config
        self._writer_socket = writer_socket
        self._options = options
        self._writer = writer
        super().__init__()

    def run(self) -> None:
        from gunicorn.arbiter import Arbiter

        writer = self._writer

        class _Arbiter(Arbiter):
            def reap_workers(self) -> None:
                # gunicorn reaps every child with waitpid(-1): the writer's
                # exit status would be lost (Popen then reads 0) and a writer
                # killed by a signal would be logged as having exited cleanly.
                writer.reap()
                super().reap_workers()

        try:
            _Arbiter(self).run()
        except RuntimeError as error:
            print(f"\nError: {error}\n", file=sys.stderr)
            sys.exit(1)

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from idmint.ca.api import create_app

        return create_app(self._config, writer_socket=self._writer_socket)
