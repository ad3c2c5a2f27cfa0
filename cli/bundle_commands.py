"""``idmint bundle``: the trust bundle of a trust domain."""

from __future__ import annotations

import click

from idmint.cli.context import data_directory
from idmint.cli.options import data_dir_option
from idmint.cli.output import emit_json


@click.group()
def bundle() -> None:
    """Show the trust bundle."""


@bundle.command("show")
@data_dir_option
@click.option(
    "--format", "fmt", type=click.Choice(["pem", "jwks"]), default="pem", show_default=True
)
def show(data_dir: str | None, fmt: str) -> None:
    """Print the bundle: PEM roots, or the SPIFFE bundle JWKS (roots and JWT keys)."""
    # Imported here: --help and completion stay light (see idmint.cli.main).
    from idmint.ca.jose.bundle import load_bundle

    with data_directory(data_dir) as (config, database):
        bundle = load_bundle(database, config.trust_domain)
    if fmt == "jwks":
        emit_json(bundle.jwks())
    else:
        click.echo(bundle.pem(), nl=False)
