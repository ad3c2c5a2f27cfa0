"""``idmint server``: the HTTPS API under gunicorn.

The master process prepares (migrations, authorities, the server's TLS
certificate), then finalises PKCS#11 before gunicorn forks: a module
initialised before ``fork()`` is not usable in the child, so each worker
opens its own sessions on its first request.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import click

from cli.options import data_dir_option


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    return host.strip("[]"), int(port)


@click.command()
@data_dir_option
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT for HTTPS.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--san", "sans", multiple=True, help="Extra DNS name or IP for the TLS certificate.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Use this certificate chain.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Key for --tls-cert.")
@click.option(
    "--rate-limit",
    default="600/minute",
    show_default=True,
    help="Per address and per identity, per worker ('none' to disable).",
)
def server(
    data_dir: str | None,
    listen: str,
    workers: int,
    threads: int,
    sans: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    rate_limit: str,
) -> None:
    """Serve the HTTPS API (gunicorn) and the admin socket DIR/server/admin.sock."""
    from ca.config import load, resolve_data_dir

    directory = resolve_data_dir(data_dir)
    config = load(directory)
    host, port = _split_listen(listen)
    _check_free(host, port)  # before anything is written
    server_dir = directory / "server"
    server_dir.mkdir(mode=0o700, exist_ok=True)
    metrics_dir = server_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    # Before anything imports prometheus_client: workers share metrics through files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    if config.issuer_url == "https://127.0.0.1:8443" and listen != "127.0.0.1:8443":
        from dataclasses import replace

        config = replace(config, issuer_url=f"https://{listen}")

    names = [host, *sans]
    if tls_cert and tls_key:
        certfile, keyfile = Path(tls_cert), Path(tls_key)
        _prepare(config, None, [])
    else:
        certfile, keyfile = _prepare(config, server_dir, names)

    socket_path = server_dir / "admin.sock"
    socket_path.unlink(missing_ok=True)
    writer = _Writer(directory, server_dir / "writer.sock")
    writer.start()
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
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "certfile": str(certfile),
        "keyfile": str(keyfile),
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "timeout": 60,
        "graceful_timeout": 10,
        "limit_request_line": 8190,
        "limit_request_field_size": 16384,
        "ssl_context": _reused_ssl_context,
        "when_ready": lambda arbiter: _when_ready(
            arbiter, socket_path, directory, names, not (tls_cert and tls_key), writer
        ),
    }
    click.echo(
        f"idmint serving {config.trust_domain} on https://{listen} "
        f"(admin socket {socket_path}), {workers} workers x {threads} threads",
        err=True,
    )
    try:
        _Gunicorn(
            config, None if rate_limit == "none" else rate_limit, str(writer.path), options
        ).run()
    finally:
        writer.stop()  # after the workers: it commits what they sent last


class _Writer:
    """The database writer process (ca/writer.py) beside gunicorn's master.

    Started before the workers, restarted if it dies, stopped after them.
    A separate interpreter rather than a fork: the master must stay free of
    threads and database handles that forked workers would inherit.
    """

    def __init__(self, directory: Path, path: Path) -> None:
        self.directory = directory
        self.path = path
        self.process: Any = None
        self._stopping = False

    def start(self) -> None:
        import socket
        import subprocess
        import sys
        import time

        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ca.writer",
                str(self.directory),
                str(self.path),
                "--parent",
                str(os.getpid()),
            ]
        )
        deadline = time.monotonic() + 60
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.path))
                    return
                except OSError:
                    pass  # not listening yet
            status = self.process.poll()
            if status is not None or time.monotonic() > deadline:
                self.process.kill()
                raise click.ClickException(
                    f"the database writer (python -m ca.writer) did not start (status {status}); "
                    "its messages are above"
                )
            time.sleep(0.05)

    def watch(self, arbiter: Any) -> None:
        """Master hook: restart the writer if it exits while the server runs."""
        import threading
        import time

        def loop() -> None:
            while not self._stopping:
                time.sleep(1.0)
                # gunicorn may reap it first; poll() then still says it exited.
                if self._stopping or self.process.poll() is None:
                    continue
                arbiter.log.error(
                    "the database writer exited (status %s); restarting it", self.process.returncode
                )
                try:
                    self.start()
                except click.ClickException as error:
                    arbiter.log.error("%s", error.message)

        threading.Thread(target=loop, name="idmint-writer-watch", daemon=True).start()

    def stop(self) -> None:
        import subprocess

        self._stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _prepare(config: Any, server_dir: Path | None, names: list[str]) -> tuple[Path, Path]:
    """Migrations, authorities and (when ``server_dir``) a fresh TLS certificate.

    PKCS#11 is finalised afterwards: gunicorn forks next, and a module
    initialised before ``fork()`` is unusable in the children.
    """
    import ipaddress

    from ca.server_tls import issue_server_tls
    from ca.service import CAService
    from hsm import module as modules

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


def _check_free(host: str, port: int) -> None:
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
            raise click.ClickException(
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


_ssl_contexts: dict[tuple[int, int, int], Any] = {}


def _reused_ssl_context(conf: Any, default_factory: Any) -> Any:
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
    writer: _Writer,
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
                    "cli.main",
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


@click.command("server-tls", hidden=True)
@data_dir_option
@click.option("--san", "sans", multiple=True)
def server_tls(data_dir: str | None, sans: tuple[str, ...]) -> None:
    """Issue a fresh TLS certificate for the server (used by its renewal)."""
    from ca.config import load, resolve_data_dir

    directory = resolve_data_dir(data_dir)
    certfile, _ = _prepare(load(directory), directory / "server", list(sans))
    click.echo(str(certfile))


def _gunicorn_base() -> Any:
    from gunicorn.app.base import BaseApplication

    return BaseApplication


class _Gunicorn(_gunicorn_base()):  # type: ignore[misc]
    """gunicorn with our options and the Flask app made in each worker."""

    def __init__(
        self, config: Any, rate_limit: str | None, writer_socket: str, options: dict[str, Any]
    ) -> None:
        self._config = config
        self._rate_limit = rate_limit
        self._writer_socket = writer_socket
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from ca.api import create_app

        return create_app(
            self._config, rate_limit=self._rate_limit, writer_socket=self._writer_socket
        )
