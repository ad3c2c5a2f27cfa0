"""Baselines in the database (``anomaly_baselines``), shared by every replica.

The row ``*`` holds the trust domain's policy and learning switch as
operators set them (``idmint anomaly policy``); without it the ``[anomaly]``
settings apply. Changes an operator makes are audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from idmint.ca.anomaly.baseline import Baseline, minute_of
from idmint.ca.anomaly.policy import POLICIES, Settings, rate_limit, refusal_limit
from idmint.ca.errors import CAError
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AnomalyBaseline

DEFAULTS_ID = "*"
#: An agent's baseline is keyed by this and the agent's own entry id.
AGENT_PREFIX = "agent:"
_STATS = (
    "samples",
    "minutes",
    "window_start",
    "window_count",
    "rate_mean",
    "rate_var",
    "interval_mean",
    "interval_var",
    "refusal_count",
    "refusal_mean",
    "refusal_var",
    "hours",
    "hours_since",
    "last_at",
    "networks",
    "audiences",
    "sources",
)
_STANDING = ("action", "reason", "decided_at")
_SWITCHES = ("policy", "exempt", "frozen")


class BaselineNotFound(CAError):
    """No baseline for this entry (it has not issued anything yet)."""

    code = "anomaly-baseline-not-found"


def agent_key(agent_entry_id: str) -> str:
    """The baseline key of the agent whose registration entry is ``agent_entry_id``."""
    return AGENT_PREFIX + agent_entry_id


def entry_of(key: str) -> str:
    """The registration entry a baseline key belongs to (an agent's own entry for its key)."""
    return key.removeprefix(AGENT_PREFIX)


def to_baseline(row: AnomalyBaseline) -> Baseline:
    return Baseline(
        entry_id=row.entry_id,
        **{name: getattr(row, name) for name in (*_STATS, *_STANDING, *_SWITCHES)},
    )


def fresh(entry_id: str, now: datetime) -> Baseline:
    return Baseline(entry_id=entry_id, window_start=minute_of(now))


def write(session: Session, baseline: Baseline, now: datetime, fields: tuple[str, ...]) -> None:
    """Store ``fields`` of ``baseline`` (a new row gets all of them)."""
    row = session.get(AnomalyBaseline, baseline.entry_id)
    if row is None:
        row = AnomalyBaseline(entry_id=baseline.entry_id, updated_at=now)
        for name in (*_STATS, *_STANDING, *_SWITCHES):
            setattr(row, name, getattr(baseline, name))
        session.add(row)
        return
    for name in fields:
        value = getattr(baseline, name)
        setattr(row, name, list(value) if isinstance(value, list) else value)
    row.updated_at = now


STATS, STANDING, SWITCHES = _STATS, _STANDING, _SWITCHES


@dataclass(frozen=True)
class Defaults:
    policy: str
    learn: bool


def defaults(session: Session, settings: Settings) -> Defaults:
    row = session.get(AnomalyBaseline, DEFAULTS_ID)
    if row is None:
        return Defaults(settings.policy, settings.learn)
    return Defaults(row.policy or settings.policy, settings.learn and not row.frozen)


def describe(baseline: Baseline, settings: Settings) -> dict[str, Any]:
    """A baseline as operators see it."""

    def when(moment: datetime | None) -> str | None:
        return None if moment is None else moment.isoformat().replace("+00:00", "Z")

    return {
        "entry_id": baseline.entry_id,
        "action": baseline.action,
        "reason": baseline.reason,
        "decided_at": when(baseline.decided_at),
        "policy": baseline.policy or None,
        "exempt": baseline.exempt,
        "learning": not baseline.frozen,
        "samples": baseline.samples,
        "minutes": baseline.minutes,
        "rate_per_minute": {
            "mean": round(baseline.rate_mean, 4),
            "std": round(baseline.rate_std, 4),
            "limit": round(rate_limit(baseline, settings), 4),
        },
        "interval_seconds": {
            "mean": round(baseline.interval_mean, 2),
            "std": round(baseline.interval_std, 2),
        },
        "refusals_per_minute": {
            "mean": round(baseline.refusal_mean, 4),
            "std": round(baseline.refusal_std, 4),
            "limit": round(refusal_limit(baseline, settings), 4),
        },
        "active_hours_utc": baseline.active_hours(),
        "hours_since": when(baseline.hours_since),
        "last_at": when(baseline.last_at),
        "networks": list(baseline.networks),
        "audiences": list(baseline.audiences),
        "sources": list(baseline.sources),
    }


def list_all(database: Database) -> list[Baseline]:
    with database.reading() as session:
        return [
            to_baseline(row)
            for row in session.scalars(
                select(AnomalyBaseline)
                .where(AnomalyBaseline.entry_id != DEFAULTS_ID)
                .order_by(AnomalyBaseline.entry_id)
            )
        ]


def get(database: Database, entry_id: str) -> Baseline:
    with database.reading() as session:
        row = session.get(AnomalyBaseline, entry_id)
        if row is None or entry_id == DEFAULTS_ID:
            raise BaselineNotFound(
                f"no anomaly baseline for entry {entry_id!r} (nothing issued yet)"
            )
        return to_baseline(row)


def _event(session: Session, action: str, entry_id: str, actor: str, **detail: Any) -> None:
    audit.append(
        session,
        [audit.Event(f"anomaly.{action}", entry_id, actor, detail=detail, at=datetime.now(UTC))],
    )


def clear(database: Database, entry_id: str, actor: str, forget: bool = False) -> Baseline:
    """Lift the standing decision (and with ``forget``, the learned baseline too).

    A denied entry stays disabled: re-enable it with ``idmint entry update``.
    """
    now = datetime.now(UTC)
    with database.session() as session:
        row = session.get(AnomalyBaseline, entry_id, with_for_update=True)
        if row is None or entry_id == DEFAULTS_ID:
            raise BaselineNotFound(
                f"no anomaly baseline for entry {entry_id!r} (nothing issued yet)"
            )
        was = row.action
        if forget:
            blank = fresh(entry_id, now)
            for name in _STATS:
                setattr(row, name, getattr(blank, name))
        row.action, row.reason, row.decided_at, row.updated_at = None, None, None, now
        _event(session, "clear", entry_id, actor, was=was, forget=forget)
        return to_baseline(row)


def set_policy(
    database: Database,
    entry_id: str | None,
    actor: str,
    *,
    policy: str | None = None,
    learn: bool | None = None,
    exempt: bool | None = None,
) -> Baseline:
    """Set an entry's (or, with ``entry_id`` None, the default) policy, learning, exemption."""
    if policy not in (None, "", *POLICIES):
        raise CAError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
    if entry_id is None and exempt is not None:
        raise CAError("--exempt applies to one entry; pass --entry")
    target = entry_id or DEFAULTS_ID
    now = datetime.now(UTC)
    with database.session() as session:
        row = session.get(AnomalyBaseline, target, with_for_update=True)
        if row is None:
            baseline = fresh(target, now)
            write(session, baseline, now, ())
            session.flush()
            row = session.get(AnomalyBaseline, target)
            assert row is not None
        changes: dict[str, Any] = {}
        if policy is not None:
            row.policy = changes["policy"] = policy
        if learn is not None:
            row.frozen = not learn
            changes["learn"] = learn
        if exempt is not None:
            row.exempt = changes["exempt"] = exempt
        row.updated_at = now
        _event(session, "policy", target, actor, **changes)
        return to_baseline(row)
