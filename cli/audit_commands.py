"""``idmint audit``: verify, read and export the tamper-evident audit log.

- ``verify [--checkpoint FILE]``: the hash chain, every stored checkpoint,
  and that the chain still extends a checkpoint the operator kept;
- ``checkpoint --out FILE``: save the newest signed checkpoint;
- ``list``: events for people (or ``--output json``);
- ``export [--follow] [--syslog]``: JSON lines, one event a line, for a SIEM
  or a log shipper, optionally to syslog as well.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import signal
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from idmint.cli.context import data_directory

if TYPE_CHECKING:  # at run time imported where used: --help stays light
    from idmint.ca.config import CAConfig
    from idmint.ca.storage.audit import LoggedEvent
    from idmint.ca.storage.db import Database
from idmint.cli.options import Duration, data_dir_option
from idmint.cli.output import emit_json, emit_table, output_option
from idmint.signals import SignalFlag, Stopping


class Since(click.ParamType):
    """An ISO 8601 time with zone, or a duration back from now (``1h``, ``7d``)."""

    name = "time"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if text[-1:].lower() in "smhd" and text[:-1].isdigit():
            return datetime.now(UTC) - Duration().convert(text, param, ctx)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither an ISO 8601 time nor a duration like 1h", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} needs a time zone (for example Z)", param, ctx)
        return moment


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@click.group()
def audit() -> None:
    """The audit log: verify it, read it, export it."""


# -- verify / checkpoint --------------------------------------------------------


def _read_checkpoint(path: str) -> str:
    """A checkpoint file: the compact JWS, or the JSON GET /v1/audit/checkpoints returns."""
    from idmint.ca.authority.checkpoints import CheckpointInvalid

    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeError) as error:
        raise CheckpointInvalid(f"cannot read checkpoint file {path}: {error}") from None
    if text.startswith("{"):
        try:
            text = str(json.loads(text)["checkpoint"])
        except (ValueError, KeyError, TypeError):
            raise CheckpointInvalid(
                f"{path} is JSON without a 'checkpoint' member: not an audit checkpoint"
            ) from None
    return text


def _keys(config: CAConfig, database: Database, keys_file: str | None) -> Any:
    from idmint.ca.authority.checkpoints import CheckpointInvalid, hsm_audit_keys, jwks_keys
    from idmint.hsm import KeyStore

    if keys_file is not None:
        try:
            document = json.loads(Path(keys_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CheckpointInvalid(f"cannot read audit key set {keys_file}: {error}") from None
        return jwks_keys(document)
    # From the HSM, not the database: the database is what is being checked.
    with KeyStore(config.hsm) as keystore:
        return hsm_audit_keys(keystore, database)


@audit.command("verify")
@data_dir_option
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(dir_okay=False),
    help="A checkpoint kept outside the database: prove the log still extends it.",
)
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(dir_okay=False),
    help="Verify signatures with this JWKS (a saved GET /v1/audit/keys) instead of the HSM.",
)
@output_option
def verify(
    data_dir: str | None, checkpoint_file: str | None, keys_file: str | None, output: str
) -> None:
    """Recompute the hash chain and check the signed checkpoints; exit 1 naming the fault."""
    from idmint.ca.authority.checkpoints import verify_log, verify_token

    with data_directory(data_dir) as (config, database):
        token = _read_checkpoint(checkpoint_file) if checkpoint_file else None
        keys = _keys(config, database, keys_file)
        claims = verify_token(token, keys) if token is not None else None
        with database.reading() as session:
            report = verify_log(session, keys, claims)
    latest = report.latest
    if output == "json":
        emit_json(
            {
                "ok": True,
                "events": report.chain.events,
                "head_seq": report.chain.head_seq,
                "head_hash": report.chain.head_hash,
                "first_event_at": report.summary.first_at,
                "last_event_at": report.summary.last_at,
                "checkpoints": report.checkpoints,
                "latest_checkpoint": latest.to_json() if latest else None,
                "extends_checkpoint": (
                    None
                    if report.extends is None
                    else {"seq": report.extends.seq, "time": report.extends.time}
                ),
            }
        )
        return
    click.echo(f"Audit log intact: {report.chain.events} events")
    click.echo(f"  head         event {report.chain.head_seq}, hash {report.chain.head_hash}")
    click.echo(
        f"  time span    {_time(report.summary.first_at)} -> {_time(report.summary.last_at)}"
    )
    if latest is None:
        click.echo("  checkpoints  none signed yet (the server signs them)")
    else:
        behind = report.chain.head_seq - latest.seq
        click.echo(
            f"  checkpoints  {report.checkpoints} signed, all verify; latest #{latest.number} "
            f"covers event {latest.seq} ({behind} event(s) since), signed {_time(latest.at)} "
            f"by audit key {latest.kid}"
        )
    if report.extends is not None:
        click.echo(
            f"  extends      your checkpoint of event {report.extends.seq} "
            f"signed {_time(report.extends.time)} by {report.extends.kid}"
        )


@audit.command("checkpoint")
@data_dir_option
@click.option(
    "--out", "out", type=click.Path(dir_okay=False), help="Write it here (default: stdout)."
)
@click.option(
    "--sign/--no-sign",
    default=True,
    show_default=True,
    help="First sign the current head if it moved since the newest checkpoint (needs the HSM).",
)
@output_option
def checkpoint(data_dir: str | None, out: str | None, sign: bool, output: str) -> None:
    """Save the newest signed checkpoint, to keep outside the database."""
    from idmint.ca.authority.checkpoints import latest, sign_checkpoint
    from idmint.hsm import KeyStore

    with data_directory(data_dir) as (config, database):
        if sign:
            with KeyStore(config.hsm) as keystore:
                sign_checkpoint(keystore, database, config.trust_domain)
        found = latest(database)
    if out is None:
        click.echo(json.dumps(found.to_json()) if output == "json" else found.token)
        return
    Path(out).write_text(found.token + "\n", encoding="ascii")
    if output == "json":
        emit_json({**found.to_json(), "out": out})
    else:
        click.echo(
            f"Saved checkpoint #{found.number} (event {found.seq}, signed {_time(found.at)}) "
            f"to {out}"
        )


# -- list / export --------------------------------------------------------------

_filters = [
    click.option("--since", type=Since(), help="From this time (ISO 8601) or this long ago (1h)."),
    click.option("--action", help="This action or any under it (authority, x509-svid.issue)."),
    click.option("--subject", help="Events about exactly this subject (a SPIFFE ID, a kid)."),
]


def _with_filters(function: Any) -> Any:
    for option in reversed(_filters):
        function = option(function)
    return function


@audit.command("list")
@data_dir_option
@_with_filters
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@output_option
def list_(
    data_dir: str | None,
    since: datetime | None,
    action: str | None,
    subject: str | None,
    limit: int,
    output: str,
) -> None:
    """Events, oldest first: when, who, what, about whom, and the outcome."""
    from idmint.ca.storage import audit as audit_log

    with data_directory(data_dir) as (_config, database), database.reading() as session:
        events = audit_log.read_events(
            session, since=since, action=action, subject=subject, limit=limit
        )
    if output == "json":
        emit_json([e.to_json() for e in events])
        return
    # Columns as wide as their widest cell (an action such as
    # authority.activate.intermediate is longer than any fixed width we chose).
    emit_table(
        ["SEQ", "TIME", "ACTION", "OUTCOME", "ACTOR", "SUBJECT"],
        [[e.seq, _time(e.at), e.action, e.outcome, e.actor, e.subject] for e in events],
    )


def syslog_handler(address: str) -> logging.Handler:
    """A SysLogHandler for a socket path (``/dev/log``), ``udp://H:P`` or ``tcp://H:P``."""
    from idmint.errors import ConfigError

    target: Any
    kind = socket.SOCK_DGRAM
    if address.startswith(("udp://", "tcp://")):
        host, _, port = address[6:].rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"syslog address {address!r} is not udp://HOST:PORT or tcp://HOST:PORT"
            )
        target = (host.strip("[]"), int(port))
        kind = socket.SOCK_STREAM if address.startswith("tcp://") else socket.SOCK_DGRAM
    else:
        target = address
    try:
        handler = logging.handlers.SysLogHandler(
            address=target, facility=logging.handlers.SysLogHandler.LOG_AUTH, socktype=kind
        )
    except OSError as error:
        raise ConfigError(f"cannot reach syslog at {address}: {error.strerror or error}") from None
    # Python 3.11+ defers a failed Unix-socket connect to the first record,
    # which logging would only print as a traceback: refuse it now instead.
    connected = getattr(handler, "socket", None)
    if connected is None or connected.fileno() == -1:
        handler.close()
        raise ConfigError(f"cannot reach syslog at {address}: no such socket")
    handler.ident = "idmint-audit: "
    # TCP syslog frames end at a newline (RFC 6587 non-transparent framing).
    handler.append_nul = kind == socket.SOCK_DGRAM
    if kind == socket.SOCK_STREAM:
        handler.setFormatter(logging.Formatter("%(message)s\n"))
    return handler


def _follow(
    database: Database, after_seq: int, interval: float, stop: Stopping, **filters: Any
) -> Iterator[LoggedEvent]:
    """Events after ``after_seq``, then new ones as they come, until ``stop`` is set."""
    from idmint.ca.storage import audit as audit_log

    while not stop.is_set():
        with database.reading() as session:
            batch = audit_log.read_events(session, after_seq=after_seq, limit=1000, **filters)
        yield from batch
        if batch:
            after_seq = batch[-1].seq
        if len(batch) < 1000:
            stop.wait(interval)


@audit.command("export")
@data_dir_option
@_with_filters
@click.option("--follow", is_flag=True, help="Keep running and print new events as they come.")
@click.option(
    "--interval",
    type=Duration(),
    default="1s",
    show_default=True,
    help="With --follow: how often to look for new events.",
)
@click.option("--syslog", "to_syslog", is_flag=True, help="Send each event to syslog as well.")
@click.option(
    "--syslog-address",
    help="/dev/log (default, or [audit] syslog_address), a socket path, udp://H:P or tcp://H:P.",
)
def export(
    data_dir: str | None,
    since: datetime | None,
    action: str | None,
    subject: str | None,
    follow: bool,
    interval: Any,
    to_syslog: bool,
    syslog_address: str | None,
) -> None:
    """Events as JSON lines (one event a line), for a SIEM or a log shipper.

    With --follow it stops cleanly on SIGINT or SIGTERM, after the event it
    is writing.
    """
    from idmint.ca.authority.checkpoints import AuditSettings

    stop = SignalFlag()
    filters: dict[str, Any] = {"since": since, "action": action, "subject": subject}
    with data_directory(data_dir) as (config, database):
        logger: logging.Logger | None = None
        if to_syslog or syslog_address:
            address = syslog_address or AuditSettings.from_config(config).syslog_address
            logger = logging.getLogger("idmint.audit.export")
            logger.propagate = False
            logger.setLevel(logging.INFO)
            logger.addHandler(syslog_handler(address or "/dev/log"))
        previous = {}
        if follow:
            previous = stop.set_on(signal.SIGINT, signal.SIGTERM)
        try:
            if follow:
                events: Any = _follow(database, 0, interval.total_seconds(), stop, **filters)
            else:
                from idmint.ca.storage import audit as audit_log

                with database.reading() as session:
                    events = audit_log.read_events(session, **filters)
            for event in events:
                line = json.dumps(event.to_json(), sort_keys=True, separators=(",", ":"))
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                if logger is not None:
                    logger.info(line)
        except BrokenPipeError:  # the reader went away (| head): not an error
            sys.stderr.close()
        finally:
            for signum, former in previous.items():
                signal.signal(signum, former)
            if logger is not None:
                for handler in list(logger.handlers):
                    handler.close()
                    logger.removeHandler(handler)
