"""``idmint entry``: registration entries, directly on the data directory."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from idmint.cli import admin_client
from idmint.cli.context import data_directory, resolve_data_dir
from idmint.cli.options import Duration, Moment, cli_actor, data_dir_option, invoking_user
from idmint.cli.output import emit_fields, emit_json, output_option

if TYPE_CHECKING:
    from idmint.ca.issuance.entries import EntryStore, EntryView

# The CA's modules are imported when a command runs: --help and completion
# stay light (see idmint.cli.main).


def _store(config: Any, database: Any) -> EntryStore:
    from idmint.ca.issuance.entries import EntryStore
    from idmint.ca.spiffe_id import TrustDomain

    return EntryStore(database, TrustDomain(config.trust_domain))


def _print(view: EntryView | dict[str, Any], output: str) -> None:
    data = view if isinstance(view, dict) else view.to_json()
    if output == "json":
        emit_json(data)
        return
    emit_fields(
        [
            ("Entry ID", data["id"]),
            ("SPIFFE ID", data["spiffe_id"]),
            ("Selectors", ", ".join(data["selectors"])),
            ("Owner", data["owner"]),
            ("Expires", data["expires_at"]),
            ("X509 TTL", f"{data['x509_ttl_seconds']}s"),
            ("JWT TTL", f"{data['jwt_ttl_seconds']}s"),
            ("Audiences", ", ".join(data["audiences"]) or "-"),
            ("DNS names", ", ".join(data["dns_names"]) or "-"),
            ("Admin", data["admin"]),
            ("Disabled", data["disabled"]),
            ("Parent ID", data.get("parent_id") or "-"),
            ("Node selectors", ", ".join(data.get("node_selectors") or ()) or "-"),
        ]
    )


def _json_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """EntrySpec keyword arguments as the admin API's JSON fields."""
    out: dict[str, Any] = {}
    for name, value in spec.items():
        if name in ("x509_ttl", "jwt_ttl"):
            out[f"{name}_seconds"] = int(value.total_seconds())
        elif name == "expires_at":
            out[name] = value.isoformat()
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


@click.group()
def entry() -> None:
    """Manage registration entries (selectors -> SPIFFE ID)."""


@entry.command("create")
@data_dir_option
@click.option("--spiffe-id", required=True, help="spiffe://TD/path this entry grants.")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    required=True,
    help="type:value, all must match (repeat).",
)
@click.option(
    "--owner",
    default=invoking_user,
    show_default="the invoking user",
    help="Who is responsible for this identity (a team, person or service).",
)
@click.option("--expires-at", type=Moment(), required=True, help="ISO 8601 time or 90d.")
@click.option("--x509-ttl", type=Duration(), default="10m", show_default=True)
@click.option("--jwt-ttl", type=Duration(), default="5m", show_default=True)
@click.option("--audience", "audiences", multiple=True, help="Allowed JWT audience (repeat).")
@click.option("--dns-name", "dns_names", multiple=True, help="DNS SAN (repeat).")
@click.option("--admin", is_flag=True, help="Holders may call the admin API.")
@click.option("--disabled", is_flag=True)
@click.option("--parent-id", help="Agent SPIFFE ID that serves this entry (idmint agent list).")
@click.option(
    "--node-selector",
    "node_selectors",
    multiple=True,
    help="Served by every agent with this node selector (repeat).",
)
@output_option
def create(
    data_dir: str | None,
    spiffe_id: str,
    selectors: tuple[str, ...],
    owner: str,
    expires_at: datetime,
    x509_ttl: timedelta,
    jwt_ttl: timedelta,
    audiences: tuple[str, ...],
    dns_names: tuple[str, ...],
    admin: bool,
    disabled: bool,
    parent_id: str | None,
    node_selectors: tuple[str, ...],
    output: str,
) -> None:
    """Create a registration entry."""
    spec: dict[str, Any] = {
        "spiffe_id": spiffe_id,
        "selectors": selectors,
        "owner": owner,
        "expires_at": expires_at,
        "x509_ttl": x509_ttl,
        "jwt_ttl": jwt_ttl,
        "audiences": audiences,
        "dns_names": dns_names,
        "admin": admin,
        "disabled": disabled,
        "node_selectors": node_selectors,
    }
    if parent_id is not None:
        spec["parent_id"] = parent_id
    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        made = admin_client.call(directory, "POST", "/v1/entries", _json_spec(spec))
        _warn(made.pop("warnings", None) or ())
        _print(made, output)
        return
    from idmint.ca.issuance.entries import EntrySpec, selector_warnings

    entry_spec = EntrySpec(**spec)
    with data_directory(data_dir) as (config, database):
        view = _store(config, database).create(entry_spec, actor=cli_actor())
    _warn(selector_warnings(entry_spec, config.attestors()))
    _print(view, output)


def _warn(warnings: Iterable[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


@entry.command("list")
@data_dir_option
@output_option
def list_(data_dir: str | None, output: str) -> None:
    """List registration entries."""
    with data_directory(data_dir) as (config, database):
        views = _store(config, database).list()
    if output == "json":
        emit_json([v.to_json() for v in views])
        return
    click.echo(f"{'ID':36}  {'SPIFFE ID':40}  {'OWNER':16}  {'EXPIRES':20}  SELECTORS")
    for v in views:
        state = " (disabled)" if v.disabled else ""
        click.echo(
            f"{v.id:36}  {v.spiffe_id:40}  {v.owner:16}  "
            f"{v.expires_at:%Y-%m-%dT%H:%M:%SZ}  {','.join(v.selectors)}{state}"
        )


@entry.command("show")
@data_dir_option
@click.argument("entry_id")
@output_option
def show(data_dir: str | None, entry_id: str, output: str) -> None:
    """Show one registration entry."""
    with data_directory(data_dir) as (config, database):
        view = _store(config, database).get(entry_id)
    _print(view, output)


@entry.command("update")
@data_dir_option
@click.argument("entry_id")
@click.option("--selector", "selectors", multiple=True, help="Replace the selectors.")
@click.option("--owner")
@click.option("--expires-at", type=Moment())
@click.option("--x509-ttl", type=Duration())
@click.option("--jwt-ttl", type=Duration())
@click.option("--audience", "audiences", multiple=True, help="Replace the audiences.")
@click.option("--dns-name", "dns_names", multiple=True, help="Replace the DNS names.")
@click.option("--admin/--no-admin", default=None)
@click.option("--disabled/--enabled", default=None)
@output_option
def update(data_dir: str | None, entry_id: str, output: str, **changes: Any) -> None:
    """Change fields of a registration entry (the others stay)."""
    given = {k: v for k, v in changes.items() if v not in (None, ())}
    if not given:
        raise click.UsageError("nothing to change: give at least one option")
    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        path = f"/v1/entries/{entry_id}"
        _print(admin_client.call(directory, "PATCH", path, _json_spec(given)), output)
        return
    with data_directory(data_dir) as (config, database):
        view = _store(config, database).update(entry_id, given, actor=cli_actor())
    _print(view, output)


@entry.command("delete")
@data_dir_option
@click.argument("entry_id")
def delete(data_dir: str | None, entry_id: str) -> None:
    """Delete a registration entry."""
    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        admin_client.call(directory, "DELETE", f"/v1/entries/{entry_id}")
        click.echo(f"Deleted entry {entry_id}")
        return
    with data_directory(data_dir) as (config, database):
        _store(config, database).delete(entry_id, actor=cli_actor())
    click.echo(f"Deleted entry {entry_id}")
