"""``idmint anomaly``: baselines, standing decisions and policies of the anomaly response.

Works on the database directly (shared by every replica); running servers
see a change within ``[anomaly] sync_seconds`` (1 s). Every change is audited.
"""

from __future__ import annotations

import click

from idmint.ca.anomaly import store
from idmint.ca.anomaly.policy import POLICIES, Settings
from idmint.ca.config import CAConfig
from idmint.cli.context import data_directory
from idmint.cli.options import cli_actor, data_dir_option
from idmint.cli.output import emit_fields, emit_json, output_option


def _settings(config: CAConfig) -> Settings:
    return Settings.from_section(config.extra.get("anomaly"), str(config.config_path))


@click.group()
def anomaly() -> None:
    """Issuance anomaly response: who behaves unlike itself, and what was done."""


@anomaly.command("list")
@data_dir_option
@click.option("--all", "show_all", is_flag=True, help="Every baseline, not only those acted on.")
@output_option
def list_(data_dir: str | None, show_all: bool, output: str) -> None:
    """Entries with a standing decision (throttle, step-up, deny), or all with --all."""
    with data_directory(data_dir) as (config, database):
        settings = _settings(config)
        rows = [b for b in store.list_all(database) if show_all or b.action]
        described = [store.describe(b, settings) for b in rows]
    if output == "json":
        emit_json(described)
        return
    click.echo(f"{'ENTRY':36}  {'ACTION':8}  {'RATE/MIN':>16}  {'SAMPLES':>7}  REASON")
    for item in described:
        rate = item["rate_per_minute"]
        click.echo(
            f"{item['entry_id']:36}  {item['action'] or '-':8}  "
            f"{rate['mean']:>8.2f} +- {rate['std']:<4.2f}  {item['samples']:>7}  "
            f"{item['reason'] or ''}"
        )


@anomaly.command("show")
@data_dir_option
@click.argument("entry_id")
@output_option
def show(data_dir: str | None, entry_id: str, output: str) -> None:
    """One entry's baseline and decision, with the numbers behind it."""
    with data_directory(data_dir) as (config, database):
        item = store.describe(store.get(database, entry_id), _settings(config))
    if output == "json":
        emit_json(item)
        return
    rate, interval = item["rate_per_minute"], item["interval_seconds"]
    refused, hours = item["refusals_per_minute"], item["active_hours_utc"]
    emit_fields(
        [
            ("Entry", item["entry_id"]),
            ("Action", item["action"] or "-"),
            ("Reason", item["reason"] or "-"),
            ("Decided at", item["decided_at"] or "-"),
            ("Policy", item["policy"] or "(trust-domain default)"),
            ("Exempt", item["exempt"]),
            ("Learning", item["learning"]),
            ("Issuances", item["samples"]),
            ("Minutes learned", item["minutes"]),
            ("Rate", f"{rate['mean']}/min +- {rate['std']} (acts above {rate['limit']}/min)"),
            ("Cadence", f"every {interval['mean']} s +- {interval['std']}"),
            (
                "Refusals",
                f"{refused['mean']}/min +- {refused['std']} (news above {refused['limit']}/min)",
            ),
            ("Active hours (UTC)", ", ".join(f"{h:02d}" for h in hours) or "-"),
            ("Networks", ", ".join(item["networks"]) or "-"),
            ("Audiences", ", ".join(item["audiences"]) or "-"),
            ("Sources", ", ".join(item["sources"]) or "-"),
        ]
    )


@anomaly.command("clear")
@data_dir_option
@click.argument("entry_id")
@click.option("--forget", is_flag=True, help="Also forget the learned baseline (learn anew).")
@output_option
def clear(data_dir: str | None, entry_id: str, forget: bool, output: str) -> None:
    """Lift an entry's standing decision (a denied entry stays disabled: idmint entry update)."""
    with data_directory(data_dir) as (config, database):
        cleared = store.clear(database, entry_id, cli_actor(), forget=forget)
        item = store.describe(cleared, _settings(config))
    if output == "json":
        emit_json(item)
    else:
        click.echo(f"Cleared the anomaly decision of entry {entry_id}")


@anomaly.command("policy")
@data_dir_option
@click.option("--entry", "entry_id", help="This entry (default: the trust-domain default).")
@click.option(
    "--action",
    "policy",
    type=click.Choice([*POLICIES, "default"]),
    help="Strongest response (deny turns step-up into deny); 'default' for the trust domain's.",
)
@click.option("--learn", type=click.Choice(["on", "off"]), help="Keep learning, or freeze.")
@click.option("--exempt/--no-exempt", default=None, help="Exempt the entry from checks.")
@output_option
def policy(
    data_dir: str | None,
    entry_id: str | None,
    policy: str | None,
    learn: str | None,
    exempt: bool | None,
    output: str,
) -> None:
    """Set the response policy, learning and exemption of an entry or the trust domain."""
    if policy is None and learn is None and exempt is None:
        raise click.UsageError("nothing to change: give --action, --learn or --exempt")
    with data_directory(data_dir) as (config, database):
        if entry_id is not None:
            from idmint.ca.issuance.entries import EntryStore
            from idmint.ca.spiffe_id import TrustDomain

            EntryStore(database, TrustDomain(config.trust_domain)).get(store.entry_of(entry_id))
        updated = store.set_policy(
            database,
            entry_id,
            cli_actor(),
            policy=("" if policy == "default" else policy),
            learn=None if learn is None else learn == "on",
            exempt=exempt,
        )
        settings = _settings(config)
    result = {
        "entry_id": entry_id,
        "policy": updated.policy or settings.policy,
        "learn": not updated.frozen,
        "exempt": updated.exempt,
    }
    if output == "json":
        emit_json(result)
    else:
        target = f"entry {entry_id}" if entry_id else "the trust-domain default"
        click.echo(
            f"Anomaly policy of {target}: {result['policy']}, learning "
            f"{'on' if result['learn'] else 'off'}" + (", exempt" if updated.exempt else "")
        )
