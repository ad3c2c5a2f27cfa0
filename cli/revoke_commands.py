"""``idmint revoke``: revoke an X509-SVID, a JWT-SVID or a registration entry."""

from __future__ import annotations

from typing import Any

import click

from idmint.cli import admin_client
from idmint.cli.choices import REVOCATION_REASONS
from idmint.cli.context import data_directory, resolve_data_dir
from idmint.cli.options import cli_actor, data_dir_option
from idmint.cli.output import emit_json, output_option

reason_option = click.option(
    "--reason", type=click.Choice(REVOCATION_REASONS), default="unspecified", show_default=True
)


def _revoke(data_dir: str | None, body: dict[str, Any], output: str) -> None:
    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        result = admin_client.call(directory, "POST", "/v1/revocations", body)
        revoked = result["revoked"]
    else:
        from idmint.ca.revocation.revocations import revoke_credential, revoke_entry
        from idmint.ca.storage.models import CredentialKind

        with data_directory(data_dir) as (_config, database):
            kind = body["kind"]
            if kind == "entry":
                done = revoke_entry(database, body["entry_id"], cli_actor(), body["reason"])
            else:
                identifier = body["serial"] if kind == "x509" else body["jti"]
                done = [
                    revoke_credential(
                        database, CredentialKind(kind), identifier, cli_actor(), body["reason"]
                    )
                ]
        revoked = [d.identifier for d in done]
    if output == "json":
        emit_json({"kind": body["kind"], "revoked": revoked})
    else:
        click.echo(f"Revoked {len(revoked)} credential(s): {', '.join(revoked) or '-'}")


@click.group()
def revoke() -> None:
    """Revoke credentials and identities (durable, audited, on every replica)."""


@revoke.command("x509")
@data_dir_option
@click.option("--serial", required=True, help="Hex serial number of the X509-SVID.")
@reason_option
@output_option
def x509_command(data_dir: str | None, serial: str, reason: str, output: str) -> None:
    """Put an X509-SVID on the CRL and make OCSP answer revoked."""
    _revoke(data_dir, {"kind": "x509", "serial": serial, "reason": reason}, output)


@revoke.command("jwt")
@data_dir_option
@click.option("--jti", required=True)
@reason_option
@output_option
def jwt_command(data_dir: str | None, jti: str, reason: str, output: str) -> None:
    """Deny a JWT-SVID until it expires."""
    _revoke(data_dir, {"kind": "jwt", "jti": jti, "reason": reason}, output)


@revoke.command("entry")
@data_dir_option
@click.option("--id", "entry_id", required=True)
@reason_option
@output_option
def entry_command(data_dir: str | None, entry_id: str, reason: str, output: str) -> None:
    """Disable an entry and revoke its outstanding credentials."""
    _revoke(data_dir, {"kind": "entry", "entry_id": entry_id, "reason": reason}, output)


@revoke.command("authority")
@data_dir_option
@click.option("--id", "authority_id", type=int, required=True, help="See idmint authority list.")
@output_option
def authority_command(data_dir: str | None, authority_id: int, output: str) -> None:
    """Drop an authority from the bundle now (same as idmint authority revoke)."""
    from idmint.ca.authority.rotation import describe
    from idmint.ca.authority.rotation import revoke as revoke_authority
    from idmint.hsm import KeyStore

    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        admin_client.call(
            directory, "POST", "/v1/revocations", {"kind": "authority", "id": authority_id}
        )
        if output == "json":
            emit_json({"kind": "authority", "revoked": [str(authority_id)]})
        else:
            click.echo(f"Revoked authority {authority_id}")
        return
    with data_directory(data_dir) as (config, database), KeyStore(config.hsm) as keystore:
        row = revoke_authority(keystore, database, authority_id, cli_actor())
    if output == "json":
        emit_json(describe([row]))
    else:
        click.echo(f"Revoked authority {authority_id} ({row.kind.value})")
