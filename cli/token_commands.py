"""``idmint token``: one-time join tokens for workloads and nodes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from idmint.cli import admin_client
from idmint.cli.context import data_directory, resolve_data_dir
from idmint.cli.options import Duration, cli_actor, data_dir_option
from idmint.cli.output import emit_json, emit_table, output_option

if TYPE_CHECKING:
    from idmint.ca.storage.ledgers import JoinTokens


def _tokens(config: Any, database: Any) -> JoinTokens:
    # Imported here: --help and completion stay light (see idmint.cli.main).
    from idmint.ca.spiffe_id import TrustDomain
    from idmint.ca.storage.ledgers import JoinTokens

    return JoinTokens(database, TrustDomain(config.trust_domain))


@click.group()
def token() -> None:
    """Create, list and revoke join tokens."""


@token.command("create")
@data_dir_option
@click.option("--spiffe-id", help="The SPIFFE ID the token grants (needs an entry).")
@click.option(
    "--agent",
    "for_agent",
    is_flag=True,
    help="A node join token for 'idmint agent' (agent ID .../idmint/agent/join_token/<id>).",
)
@click.option("--ttl", type=Duration(), default="10m", show_default=True)
@output_option
def create(
    data_dir: str | None, spiffe_id: str | None, for_agent: bool, ttl: timedelta, output: str
) -> None:
    """Create a one-time join token; it is shown once."""
    if for_agent == (spiffe_id is not None):
        raise click.UsageError("give either --spiffe-id (a workload token) or --agent")
    directory = resolve_data_dir(data_dir)
    if for_agent:
        made = _agent_token(directory, data_dir, ttl)
    elif admin_client.available(directory):
        made = admin_client.call(
            directory,
            "POST",
            "/v1/join-tokens",
            {"spiffe_id": spiffe_id, "ttl_seconds": int(ttl.total_seconds())},
        )
    else:
        assert spiffe_id is not None
        with data_directory(data_dir) as (config, database):
            issued = _tokens(config, database).create(spiffe_id, ttl, cli_actor())
        made = {
            "id": issued.id,
            "token": issued.token,
            "spiffe_id": issued.spiffe_id,
            "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
        }
    if output == "json":
        emit_json(made)
    else:
        click.echo(made["token"])


def _agent_token(directory: Path, data_dir: str | None, ttl: timedelta) -> dict[str, Any]:
    if admin_client.available(directory):
        made: dict[str, Any] = admin_client.call(
            directory, "POST", "/v1/agent-tokens", {"ttl_seconds": int(ttl.total_seconds())}
        )
        return made
    from idmint.ca.issuance.agents import AgentRegistry
    from idmint.ca.spiffe_id import TrustDomain

    with data_directory(data_dir) as (config, database):
        issued = AgentRegistry(database, TrustDomain(config.trust_domain)).create_token(
            ttl, cli_actor()
        )
    return {
        "id": issued.id,
        "token": issued.token,
        "spiffe_id": issued.spiffe_id,
        "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z"),
    }


@token.command("list")
@data_dir_option
@output_option
def list_(data_dir: str | None, output: str) -> None:
    """List join tokens (never the secrets)."""
    with data_directory(data_dir) as (config, database):
        views = _tokens(config, database).list()
    if output == "json":
        emit_json([v.to_json() for v in views])
        return
    rows = [v.to_json() for v in views]
    emit_table(
        ["ID", "SPIFFE ID", "STATE", "EXPIRES"],
        [
            [v.id, v.spiffe_id, r["state"], r["expires_at"]]
            for v, r in zip(views, rows, strict=True)
        ],
    )


@token.command("revoke")
@data_dir_option
@click.argument("token_id")
def revoke(data_dir: str | None, token_id: str) -> None:
    """Revoke an unused join token."""
    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        admin_client.call(directory, "DELETE", f"/v1/join-tokens/{token_id}")
    else:
        with data_directory(data_dir) as (config, database):
            _tokens(config, database).revoke(token_id, cli_actor())
    click.echo(f"Revoked join token {token_id}")
