"""From a request and its baseline to signals, and from signals to an action.

Actions, in escalating order (issue 15):

- ``observe``: a metric and an audit event with the reason, nothing refused;
- ``throttle``: the identity gets a lower limit (its own band, at least
  ``min_rate_per_minute``) until an operator clears it;
- ``step-up``: renewal by proof of possession is refused: the workload must
  attest afresh with new evidence;
- ``deny``: the entry is disabled and its outstanding credentials revoked,
  as ``idmint revoke entry`` does.

Signals and the action each calls for: a rate above the band -> throttle,
and again in a later minute while throttled -> step-up; attestation from a
source never seen (another CI repository or ref, cluster, namespace) ->
step-up; a new source network or JWT audience, issuance at an hour of day
(UTC) never seen in ``hours_learning_days`` of learning, or refusals per
minute above their own band -> observe. The policy of an
entry (or the trust-domain default) caps the action (``observe``,
``throttle``, ``step-up``) or, with ``deny``, turns step-up into deny.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from idmint.ca.anomaly.baseline import Baseline, Sample
from idmint.errors import ConfigError


class Action(enum.IntEnum):
    """What the anomaly response does, weakest first."""

    NONE = 0
    OBSERVE = 1
    THROTTLE = 2
    STEP_UP = 3
    DENY = 4

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> Action:
        for action in cls:
            if action.label == text and action is not Action.NONE:
                return action
        raise ConfigError(f"anomaly action {text!r} is not one of observe, throttle, step-up, deny")


POLICIES = ("observe", "throttle", "step-up", "deny")


@dataclass(frozen=True)
class Settings:
    """The ``[anomaly]`` section of idmint.toml (trust-domain defaults)."""

    enabled: bool = True
    policy: str = "step-up"
    learn: bool = True
    band_sigmas: float = 4.0
    min_rate_per_minute: float = 5.0
    #: No action before this many minutes and issuances have been learned.
    learning_minutes: int = 1440
    learning_samples: int = 20
    #: Refusals per minute below this are never news (the band's floor).
    min_refusals_per_minute: float = 5.0
    #: Days of hours-of-day counts before an hour never seen is news.
    hours_learning_days: float = 7.0
    #: How long a process may act on its cached baseline before re-reading it.
    sync_seconds: float = 1.0

    def __post_init__(self) -> None:
        Action.parse(self.policy)
        if self.band_sigmas <= 0 or self.min_rate_per_minute <= 0:
            raise ConfigError("[anomaly] band_sigmas and min_rate_per_minute must be positive")
        if self.min_refusals_per_minute <= 0 or self.hours_learning_days <= 0:
            raise ConfigError(
                "[anomaly] min_refusals_per_minute and hours_learning_days must be positive"
            )
        if self.learning_minutes < 0 or self.learning_samples < 0 or self.sync_seconds < 0:
            raise ConfigError("[anomaly] learning_* and sync_seconds must not be negative")

    @classmethod
    def from_section(cls, section: Any, where: str = "idmint.toml") -> Settings:
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: [anomaly] must be a table")
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise ConfigError(f"{where}: unknown [anomaly] settings {sorted(unknown)}")
        try:
            return cls(**section)
        except TypeError as error:
            raise ConfigError(f"{where}: [anomaly] {error}") from None


@dataclass(frozen=True)
class Signal:
    """One way this request differs from the baseline, with its numbers."""

    name: str
    action: Action
    reason: str


def _n(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def rate_limit(baseline: Baseline, settings: Settings) -> float:
    """Issuances per minute this identity may make before the rate signal fires."""
    band = baseline.rate_mean + settings.band_sigmas * baseline.rate_std
    return max(band, settings.min_rate_per_minute)


def refusal_limit(baseline: Baseline, settings: Settings) -> float:
    """Refusals per minute this identity may meet before the refusals signal fires."""
    band = baseline.refusal_mean + settings.band_sigmas * baseline.refusal_std
    return max(band, settings.min_refusals_per_minute)


def refusals(baseline: Baseline, settings: Settings) -> Signal | None:
    """The refusals signal, if this minute's refusals (already counted) are above the band."""
    if not learned(baseline, settings):
        return None
    limit = refusal_limit(baseline, settings)
    if baseline.refusal_count <= limit:
        return None
    return Signal(
        "refusals",
        Action.OBSERVE,
        f"refusals {baseline.refusal_count}/min vs baseline {_n(baseline.refusal_mean)}/min "
        f"+- {_n(baseline.refusal_std)} (limit {_n(limit)}/min)",
    )


def _hours(hours: list[int]) -> str:
    """Hours of day as ranges: ``08-17, 22`` (each hour h covers h:00 to h:59)."""
    spans: list[list[int]] = []
    for hour in hours:
        if spans and spans[-1][1] == hour - 1:
            spans[-1][1] = hour
        else:
            spans.append([hour, hour])
    return ", ".join(f"{a:02d}" if a == b else f"{a:02d}-{b:02d}" for a, b in spans)


def learned(baseline: Baseline, settings: Settings) -> bool:
    return (
        baseline.minutes >= settings.learning_minutes
        and baseline.samples >= settings.learning_samples
    )


def signals(baseline: Baseline, sample: Sample, settings: Settings) -> list[Signal]:
    """How ``sample`` (already counted in the window) differs from ``baseline``."""
    if not learned(baseline, settings):
        return []
    found: list[Signal] = []
    limit = rate_limit(baseline, settings)
    if baseline.window_count > limit:
        standing = Action.parse(baseline.action) if baseline.action else Action.NONE
        earlier = baseline.decided_at is not None and baseline.decided_at < baseline.window_start
        escalate = standing >= Action.THROTTLE and earlier
        found.append(
            Signal(
                "rate",
                Action.STEP_UP if escalate else Action.THROTTLE,
                f"rate {baseline.window_count}/min vs baseline {_n(baseline.rate_mean)}/min "
                f"+- {_n(baseline.rate_std)} (limit {_n(limit)}/min"
                + (", again after being throttled)" if escalate else ")"),
            )
        )
    if sample.source and sample.source not in baseline.sources:
        found.append(
            Signal(
                "source",
                Action.STEP_UP,
                f"attestation from a new source {sample.source!r} "
                f"(seen: {', '.join(baseline.sources) or 'none'})",
            )
        )
    if sample.network and baseline.networks and sample.network not in baseline.networks:
        found.append(
            Signal(
                "network",
                Action.OBSERVE,
                f"request from a new network {sample.network} "
                f"(seen: {', '.join(baseline.networks)})",
            )
        )
    hour = sample.at.hour
    if (
        baseline.hours_since is not None
        and len(baseline.hours) == 24
        and not baseline.hours[hour]
        and sample.at - baseline.hours_since >= timedelta(days=settings.hours_learning_days)
    ):
        days = (sample.at - baseline.hours_since) / timedelta(days=1)
        found.append(
            Signal(
                "hours",
                Action.OBSERVE,
                f"issuance at {hour:02d}:00-{hour:02d}:59 UTC, an hour never seen in "
                f"{days:.0f} days (active hours UTC: {_hours(baseline.active_hours())})",
            )
        )
    new_audiences = [a for a in sample.audiences if a not in baseline.audiences]
    if new_audiences and baseline.audiences:
        found.append(
            Signal(
                "audience",
                Action.OBSERVE,
                f"new audience(s) {new_audiences} (seen: {', '.join(baseline.audiences)})",
            )
        )
    return found


def decide(found: Sequence[Signal], policy: str) -> Action:
    """The action ``found`` calls for under ``policy`` (an entry's or the default)."""
    if not found:
        return Action.NONE
    strongest = max((s.action for s in found), default=Action.NONE)
    cap = Action.parse(policy)
    if cap is Action.DENY:
        return Action.DENY if strongest >= Action.STEP_UP else strongest
    return min(strongest, cap)
