"""``idmint bundle``: the trust bundle of a trust domain."""

from __future__ import annotations

import click

from ca.bundle import bundle_pem
from ca.config import load, resolve_data_dir
from ca.storage.db import Database
from cli.options import data_dir_option


@click.group()
def bundle() -> None:
    """Show the trust bundle."""


@bundle.command("show")
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(["pem"]), default="pem", show_default=True)
def show(data_dir: str | None, fmt: str) -> None:
    """Print the bundle (the roots workloads should trust)."""
    config = load(resolve_data_dir(data_dir))
    database = Database(config.database_url)
    try:
        click.echo(bundle_pem(database), nl=False)
    finally:
        database.close()
