"""``idmint audit``: check the tamper-evident audit log."""

from __future__ import annotations

import click

from idmint.cli.context import data_directory
from idmint.cli.options import data_dir_option
from idmint.cli.output import emit_json, output_option


@click.group()
def audit() -> None:
    """The audit log."""


@audit.command("verify")
@data_dir_option
@output_option
def verify(data_dir: str | None, output: str) -> None:
    """Recompute the hash chain; exit 1 naming the first altered event."""
    # Imported here: --help and completion stay light (see idmint.cli.main).
    from idmint.ca.storage.audit import verify_database

    with data_directory(data_dir) as (_config, database), database.reading() as session:
        report = verify_database(session)
    if output == "json":
        emit_json({"ok": True, "events": report.events, "head_hash": report.head_hash})
        return
    click.echo(f"Audit log intact: {report.events} events, head {report.head_hash}")
