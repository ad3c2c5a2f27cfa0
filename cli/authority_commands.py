"""``idmint authority``: list and rotate the root, intermediate and JWT authorities."""

from __future__ import annotations

import click

from idmint.ca.authority.authorities import authorities
from idmint.ca.authority.rotation import (
    RotationPolicy,
    activate,
    describe,
    prepare,
    retire,
    revoke,
    taint,
)
from idmint.ca.config import CAConfig
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import Authority, AuthorityKind, AuthorityState
from idmint.cli.context import data_directory
from idmint.cli.options import cli_actor, data_dir_option
from idmint.cli.output import emit_json, emit_table, output_option
from idmint.hsm import KeyStore

KINDS = click.Choice([k.value for k in AuthorityKind])


def policy_of(config: CAConfig) -> RotationPolicy:
    return RotationPolicy.from_config(config)


def _pick(database: Database, kind: str, state: AuthorityState, authority_id: int | None) -> int:
    """The authority an operator means: --id, or the one of ``kind`` in ``state``."""
    if authority_id is not None:
        return authority_id
    found = authorities(database, AuthorityKind(kind), state)
    if not found:
        hint = (
            f"run 'idmint authority prepare {kind}' first"
            if state is AuthorityState.PREPARED
            else "see 'idmint authority list' and pass --id"
        )
        raise click.UsageError(f"there is no {state.value} {kind} authority; {hint}")
    return found[-1].id


def _show(rows: list[Authority], output: str) -> None:
    data = describe(rows)
    if output == "json":
        emit_json(data)
        return
    emit_table(
        ["ID", "KIND", "STATE", "KEY", "NOT AFTER", "KID"],
        [
            [i["id"], i["kind"], i["state"], i["key_type"], i["not_after"], i["kid"] or "-"]
            for i in data
        ],
    )


@click.group()
def authority() -> None:
    """List and rotate authorities (every change is audited)."""


@authority.command("list")
@data_dir_option
@output_option
def list_(data_dir: str | None, output: str) -> None:
    """All authorities with their states."""
    with data_directory(data_dir) as (_config, database):
        _show(authorities(database), output)


def _with_keystore(
    data_dir: str | None, action: str, kind: str, authority_id: int | None, output: str
) -> None:
    with data_directory(data_dir) as (config, database):
        actor = cli_actor()
        if action == "prepare":
            with KeyStore(config.hsm) as keystore:
                rows = [prepare(keystore, database, AuthorityKind(kind), policy_of(config), actor)]
        elif action == "activate":
            rows = [
                activate(
                    database, _pick(database, kind, AuthorityState.PREPARED, authority_id), actor
                )
            ]
        elif action == "retire":
            rows = [
                retire(database, _pick(database, kind, AuthorityState.ACTIVE, authority_id), actor)
            ]
        elif action == "taint":
            target = _pick(database, kind, AuthorityState.ACTIVE, authority_id)
            with KeyStore(config.hsm) as keystore:
                tainted, successor = taint(keystore, database, target, policy_of(config), actor)
            rows = [tainted] + ([successor] if successor else [])
        else:
            if authority_id is None:
                raise click.UsageError("revoke needs --id (see idmint authority list)")
            with KeyStore(config.hsm) as keystore:
                rows = [revoke(keystore, database, authority_id, actor)]
    _show(rows, output)


def _verb(name: str, help_text: str) -> None:
    @authority.command(name, help=help_text)
    @data_dir_option
    @click.argument("kind", type=KINDS)
    @click.option(
        "--id", "authority_id", type=int, help="Which authority (default: the obvious one)."
    )
    @output_option
    def command(data_dir: str | None, kind: str, authority_id: int | None, output: str) -> None:
        _with_keystore(data_dir, name, kind, authority_id, output)


_verb("prepare", "Make and publish a successor (in the bundle before it signs).")
_verb("activate", "The prepared authority signs from now on; the active one retires.")
_verb("retire", "The active authority stops signing; its prepared successor takes over.")
_verb("taint", "Compromised: stop signing at once, a successor takes over.")
_verb("revoke", "Drop from the bundle now (everything it signed stops validating).")
