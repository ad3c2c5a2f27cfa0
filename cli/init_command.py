"""``idmint init``: create a trust domain in a data directory."""

from __future__ import annotations

from datetime import timedelta

import click

from idmint.cli.choices import DEFAULT_KEY_TYPE, KEY_TYPES
from idmint.cli.context import resolve_data_dir
from idmint.cli.options import data_dir_option
from idmint.cli.output import emit_fields, emit_json, output_option


@click.command()
@data_dir_option
@click.option("--trust-domain", required=True, help="The trust domain, e.g. example.org.")
@click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default=DEFAULT_KEY_TYPE,
    show_default=True,
    help="Key type of the root authority.",
)
@click.option("--root-lifetime-days", type=click.IntRange(min=1), default=365, show_default=True)
@click.option(
    "--pkcs11-module",
    help="Use this PKCS#11 module and an existing token instead of a new SoftHSM token.",
)
@click.option("--token-label", help="Label of the existing token (with --pkcs11-module).")
@click.option(
    "--pin-file",
    type=click.Path(dir_okay=False),
    help="File holding the token's user PIN (with --token-label); never pass a PIN itself.",
)
@click.option(
    "--database-url",
    envvar="IDMINT_DATABASE_URL",
    help="Shared database (postgresql+psycopg://...) instead of SQLite in DIR.",
)
@output_option
def init(
    data_dir: str | None,
    trust_domain: str,
    key_type: str,
    root_lifetime_days: int,
    pkcs11_module: str | None,
    token_label: str | None,
    pin_file: str | None,
    database_url: str | None,
    output: str,
) -> None:
    """Create a trust domain: HSM token, database, config and root CA."""
    # Imported here: --help and completion stay light (see idmint.cli.main).
    from idmint.ca.authority.bootstrap import ExternalToken, initialize

    directory = resolve_data_dir(data_dir)
    external = None
    if pkcs11_module or token_label or pin_file:
        if not (token_label and pin_file):
            raise click.UsageError(
                "an existing token needs --token-label and --pin-file "
                "(and --pkcs11-module unless IDMINT_PKCS11_MODULE is set)"
            )
        external = ExternalToken(module=pkcs11_module, token_label=token_label, pin_file=pin_file)
    root = initialize(
        directory,
        trust_domain,
        key_type=key_type,
        root_lifetime=timedelta(days=root_lifetime_days),
        external=external,
        database_url=database_url,
    )
    if output == "json":
        emit_json({"data_dir": str(directory), "root": root})
        return
    click.echo(f"Initialised trust domain {root.trust_domain} in {directory}\n")
    emit_fields(
        [
            ("Root subject", root.subject),
            ("SPIFFE ID", f"spiffe://{root.trust_domain}"),
            ("Serial", root.serial),
            ("SHA-256", root.sha256_fingerprint),
            ("Not before", root.not_before),
            ("Not after", root.not_after),
            ("Key type", root.key_type),
            ("Key (HSM)", root.key_uri),
        ]
    )
    click.echo("")
    click.echo(root.certificate_pem, nl=False)
