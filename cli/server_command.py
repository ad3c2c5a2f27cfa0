"""``idmint server`` and its hidden ``idmint server-tls``; the process is in idmint.ca.server."""

from __future__ import annotations

import click

from idmint.cli.options import data_dir_option


@click.command()
@data_dir_option
@click.option(
    "--listen",
    envvar="IDMINT_LISTEN",
    default="127.0.0.1:8443",
    show_default=True,
    help="HOST:PORT for HTTPS (or IDMINT_LISTEN).",
)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--san", "sans", multiple=True, help="Extra DNS name or IP for the TLS certificate.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Use this certificate chain.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Key for --tls-cert.")
@click.option(
    "--rate-limit",
    default=None,
    help="Deprecated: set [limits] per_address and per_identity in idmint.toml. "
    "Replaces both rules ('none' turns them off).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Default: [log] level in idmint.toml, else info.",
)
@click.option(
    "--log-format",
    type=click.Choice(["logfmt", "json"]),
    help="One line per request and event; default: [log] format, else logfmt.",
)
def server(
    data_dir: str | None,
    listen: str,
    workers: int,
    threads: int,
    sans: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    rate_limit: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Serve the HTTPS API (gunicorn) and the admin socket DIR/server/admin.sock."""
    import os

    from idmint.ca.server.app import serve
    from idmint.cli.context import resolve_data_dir

    if rate_limit is not None:
        click.echo(
            "idmint server: --rate-limit is deprecated; set [limits] per_address and "
            "per_identity in idmint.toml (IDMINT_LIMITS_PER_ADDRESS, ...)",
            err=True,
        )

    # Through the environment: the workers read [log] from the configuration.
    if log_level:
        os.environ["IDMINT_LOG_LEVEL"] = log_level
    if log_format:
        os.environ["IDMINT_LOG_FORMAT"] = log_format

    serve(
        resolve_data_dir(data_dir),
        listen,
        workers=workers,
        threads=threads,
        sans=sans,
        tls_cert=tls_cert,
        tls_key=tls_key,
        rate_limit=rate_limit,
    )


@click.command("server-tls", hidden=True)
@data_dir_option
@click.option("--san", "sans", multiple=True)
def server_tls(data_dir: str | None, sans: tuple[str, ...]) -> None:
    """Issue a fresh TLS certificate for the server (used by its renewal)."""
    from idmint.ca.config import load
    from idmint.ca.server.app import prepare
    from idmint.cli.context import resolve_data_dir

    directory = resolve_data_dir(data_dir)
    certfile, _ = prepare(load(directory), directory / "server", list(sans))
    click.echo(str(certfile))
