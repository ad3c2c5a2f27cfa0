"""A per-identity issuance baseline: simple, explainable statistics.

- rate: issuances per closed minute, as an exponentially weighted moving
  average (EWMA) with its variance, so the band is ``mean +- k * std``. The
  weight is ``1/n`` for the first ``n`` minutes (a plain average while
  learning), then a half-life of one day;
- cadence: the EWMA of seconds between issuances (renewal cadence);
- refusals: refusals per closed minute (requests for this entry that the
  issuer turned down: an audience or DNS name the entry does not allow...),
  an EWMA with its variance like the rate;
- hours: issuances per hour of day (UTC), counted since ``hours_since``;
- sets: source networks (IPv4 /24, IPv6 /64), JWT audiences and attestation
  sources (CI repository and ref, Kubernetes cluster and namespace) seen.

Pure functions over a :class:`Baseline`; no clock or database here.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: Half-life of the rate EWMA, in minutes: one day.
RATE_HALF_LIFE_MINUTES = 1440
RATE_ALPHA = 1 - 0.5 ** (1 / RATE_HALF_LIFE_MINUTES)
CADENCE_ALPHA = 0.05
#: Idle minutes folded in at most at once: past a week the EWMA is settled.
MAX_IDLE_MINUTES = 7 * 1440
ONE_MINUTE = timedelta(minutes=1)
#: Members kept per seen-set (the newest replace the oldest).
MAX_SET = 64
#: Selector names that say where attestation evidence came from.
SOURCE_NAMES = frozenset(
    {
        "repository",
        "ref",
        "environment",
        "job_workflow_ref",
        "project_path",
        "cluster",
        "ns",
        "namespace_path",
    }
)


@dataclass
class Baseline:
    """One entry's learned issuance profile and its standing decision."""

    entry_id: str
    window_start: datetime
    window_count: int = 0
    samples: int = 0
    minutes: int = 0
    rate_mean: float = 0.0
    rate_var: float = 0.0
    interval_mean: float = 0.0
    interval_var: float = 0.0
    refusal_count: int = 0
    refusal_mean: float = 0.0
    refusal_var: float = 0.0
    hours: list[int] = field(default_factory=list)
    hours_since: datetime | None = None
    last_at: datetime | None = None
    networks: list[str] = field(default_factory=list)
    audiences: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    action: str | None = None
    reason: str | None = None
    decided_at: datetime | None = None
    policy: str = ""
    exempt: bool = False
    frozen: bool = False

    @property
    def rate_std(self) -> float:
        return math.sqrt(max(self.rate_var, 0.0))

    @property
    def interval_std(self) -> float:
        return math.sqrt(max(self.interval_var, 0.0))

    @property
    def refusal_std(self) -> float:
        return math.sqrt(max(self.refusal_var, 0.0))

    def active_hours(self) -> list[int]:
        """The hours of day (UTC) in which this entry has issued."""
        return [hour for hour, count in enumerate(self.hours) if count]


@dataclass(slots=True)
class Sample:
    """One issuance request as the baseline sees it (made per issuance: slots, not frozen)."""

    at: datetime
    kind: str
    renewal: bool
    network: str | None = None
    audiences: tuple[str, ...] = ()
    source: str | None = None


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


@functools.lru_cache(maxsize=4096)
def network_of(address: str | None) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) network of an address; None if it is not one."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    prefix = 24 if parsed.version == 4 else 64
    return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False))


@functools.lru_cache(maxsize=4096)
def source_of(selectors: tuple[str, ...]) -> str | None:
    """The attestation source in ``selectors`` (e.g. CI repository and ref), or None."""
    found = []
    for selector in selectors:
        kind = selector.split(":", 1)[0]
        if kind == "oidc":  # oidc:<issuer>:<claim>:<value>
            parts = selector.split(":", 3)
            name = parts[2] if len(parts) == 4 else ""
        elif kind == "k8s":  # k8s:<name>:<value>
            parts = selector.split(":", 2)
            name = parts[1] if len(parts) == 3 else ""
        else:
            continue
        if name in SOURCE_NAMES:
            found.append(selector)
    return " ".join(sorted(found)) or None


def _ewma(mean: float, var: float, alpha: float, value: float) -> tuple[float, float]:
    delta = value - mean
    return mean + alpha * delta, (1 - alpha) * (var + alpha * delta * delta)


def _fold_rate(baseline: Baseline, count: float, refusals: float | None = 0.0) -> None:
    baseline.minutes += 1
    alpha = max(RATE_ALPHA, 1 / baseline.minutes)
    baseline.rate_mean, baseline.rate_var = _ewma(
        baseline.rate_mean, baseline.rate_var, alpha, count
    )
    if refusals is not None:
        baseline.refusal_mean, baseline.refusal_var = _ewma(
            baseline.refusal_mean, baseline.refusal_var, alpha, refusals
        )


def advance(
    baseline: Baseline, now: datetime, learn: bool, refusal_limit: float | None = None
) -> None:
    """Close the minutes that ended before ``now`` into the rate and refusal EWMAs.

    A minute in which a throttle or stronger decision was taken is not
    learned, nor the refusals of a minute above ``refusal_limit``: the
    baseline must not adopt the behaviour it reacted to.
    """
    if now - baseline.window_start < ONE_MINUTE:
        return  # the usual case: still in the current minute
    minute = minute_of(now)
    elapsed = int((minute - baseline.window_start) / timedelta(minutes=1))
    if elapsed <= 0:
        return
    if learn:
        anomalous = baseline.decided_at is not None and baseline.decided_at >= (
            baseline.window_start
        )
        if not anomalous:
            refused = baseline.refusal_count
            above = refusal_limit is not None and refused > refusal_limit
            _fold_rate(baseline, baseline.window_count, None if above else refused)
        for _ in range(min(elapsed - 1, MAX_IDLE_MINUTES)):
            _fold_rate(baseline, 0.0)
    baseline.window_start, baseline.window_count, baseline.refusal_count = minute, 0, 0


def _remember(seen: list[str], values: Iterable[str]) -> list[str]:
    updated = list(seen)
    for value in values:
        if value not in updated:
            updated.append(value)
    return sorted(updated[-MAX_SET:])


def learn(baseline: Baseline, sample: Sample) -> None:
    """Fold ``sample`` into the cadence and the seen-sets."""
    if baseline.last_at is not None and sample.at > baseline.last_at:
        interval = (sample.at - baseline.last_at).total_seconds()
        alpha = max(CADENCE_ALPHA, 1 / max(baseline.samples, 1))
        delta = interval - baseline.interval_mean
        baseline.interval_mean += alpha * delta
        baseline.interval_var = (1 - alpha) * (baseline.interval_var + alpha * delta * delta)
    baseline.samples += 1
    baseline.last_at = sample.at
    if len(baseline.hours) != 24 or baseline.hours_since is None:
        # A row from before hours were kept starts counting them now.
        baseline.hours, baseline.hours_since = [0] * 24, sample.at
    baseline.hours[sample.at.hour] += 1
    # Membership first: the usual sample brings nothing new, and copies nothing.
    if sample.network and sample.network not in baseline.networks:
        baseline.networks = _remember(baseline.networks, [sample.network])
    for audience in sample.audiences:
        if audience not in baseline.audiences:
            baseline.audiences = _remember(baseline.audiences, sample.audiences)
            break
    if sample.source and sample.source not in baseline.sources:
        baseline.sources = _remember(baseline.sources, [sample.source])
