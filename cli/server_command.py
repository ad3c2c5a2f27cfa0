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
    import ipaddress

    from ca.config import load, resolve_data_dir

    directory = resolve_data_dir(data_dir)
    config = load(directory)
    host, port = _split_listen(listen)
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

    from ca.server_tls import issue_server_tls
    from ca.service import CAService
    from hsm import module as modules

    service = CAService.open(config)
    try:
        dns, ips = ["localhost"], ["127.0.0.1", "::1"]
        for name in (host, *sans):
            try:
                ipaddress.ip_address(name)
                ips.append(name)
            except ValueError:
                dns.append(name)
        if tls_cert and tls_key:
            certfile, keyfile = Path(tls_cert), Path(tls_key)
        else:
            paths = issue_server_tls(
                service.keystore,
                service.database,
                server_dir,
                sorted(set(dns)),
                sorted(set(ips)),
                config.trust_domain,
            )
            certfile, keyfile = paths.certfile, paths.keyfile
    finally:
        service.close()
        modules.finalize_all()

    socket_path = server_dir / "admin.sock"
    socket_path.unlink(missing_ok=True)
    options = {
        "bind": [
            f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
            f"unix:{socket_path}",
        ],
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
        "when_ready": lambda arbiter: socket_path.chmod(0o600),
    }
    click.echo(
        f"idmint serving {config.trust_domain} on https://{listen} "
        f"(admin socket {socket_path}), {workers} workers x {threads} threads",
        err=True,
    )
    _Gunicorn(config, None if rate_limit == "none" else rate_limit, options).run()


def _gunicorn_base() -> Any:
    from gunicorn.app.base import BaseApplication

    return BaseApplication


class _Gunicorn(_gunicorn_base()):  # type: ignore[misc]
    """gunicorn with our options and the Flask app made in each worker."""

    def __init__(self, config: Any, rate_limit: str | None, options: dict[str, Any]) -> None:
        self._config = config
        self._rate_limit = rate_limit
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from ca.api import create_app

        return create_app(self._config, rate_limit=self._rate_limit)
