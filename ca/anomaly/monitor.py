"""The check the issuer makes before it signs: learn, decide, enforce.

``AnomalyMonitor.check(entry, request)`` counts the request in the entry's
baseline, compares it (:mod:`policy`), records a new decision (audit event
naming the signal and numbers, metric, the ``anomaly_baselines`` row) and
raises if a standing decision refuses it. ``AnomalyMonitor.refused(entry,
at)`` counts a request for the entry that the issuer refused; refusals far
above the entry's own band are observed, once a minute per process.

The hot path does no query: each process keeps the baselines it uses in
memory and re-reads them (writing its counts back) every ``sync_seconds``
(1 s), so a decision or an operator's change reaches every worker and
replica within that time. One request thread does that I/O for an entry,
outside the monitor's lock, while the others go on counting in memory (a
benchmark found every thread of a worker held up behind one that waited for
the database, 0.89 x the rate with checks off). Writing counts back is
best-effort: it may wait only :data:`STATS_TIMEOUT` for the database, and
if that is not enough (the database locked or read-only) the counts stay in
memory for the next try. Issuance never waits seconds, or fails, for
statistics (a fault trial found each request held for the 2 s database
timeout by this write while another process held the database). Decisions
are written at once and may wait the full timeout: they must not be lost.
Counts of the current minute are added up across processes; the learned
averages are the last writer's (they move slowly). With ``sync_seconds =
0`` every check reads and writes the row.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from idmint.ca.anomaly import metrics, store
from idmint.ca.anomaly.baseline import Baseline, Sample, advance, learn, network_of, source_of
from idmint.ca.anomaly.errors import AnomalyDenied, AnomalyThrottled, StepUpRequired
from idmint.ca.anomaly.policy import (
    Action,
    Settings,
    Signal,
    decide,
    learned,
    rate_limit,
    refusal_limit,
    refusals,
    signals,
)
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AnomalyBaseline
from idmint.ca.storage.recorder import Issuance, RecordSink
from idmint.errors import IdmintError

log = logging.getLogger(__name__)

#: The caller's address for this request, set by the HTTP layer.
REQUEST_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "idmint_request_source", default=None
)
ACTOR = "system:anomaly"
#: How long writing counts back may wait for the database (see above).
STATS_TIMEOUT = 0.1


class _Entry(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def spiffe_id(self) -> str: ...


@dataclass(slots=True)
class Request:
    """What the issuer knows of a request when it asks."""

    kind: str
    at: datetime
    selectors: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    #: Credentials this request asks for (an agent's batch counts each).
    count: int = 1
    #: Authenticated by proof of possession of an earlier SVID, whatever the
    #: selectors say (an agent's calls carry its node selectors).
    by_proof: bool = False
    #: When the caller last attested afresh, read only while a step-up stands:
    #: attesting after the decision satisfies it (an agent's calls are all by
    #: proof, so without this a step-up would stop it for good).
    attested_at: Callable[[], datetime | None] | None = None

    @property
    def renewal(self) -> bool:
        # Proof-of-possession requests carry no attested selectors.
        return self.by_proof or not self.selectors

    def attested_since(self, moment: datetime | None) -> bool:
        if self.attested_at is None or moment is None:
            return False
        attested = self.attested_at()
        return attested is not None and attested > moment


@dataclass
class _Cached:
    baseline: Baseline
    loaded: float
    pending: int = 0
    pending_refusals: int = 0
    dirty: bool = False
    decided: bool = False
    #: The minute in which this process last observed the refusals signal.
    refusals_observed: datetime | None = None
    #: A thread is writing this baseline back or re-reading it, outside the lock.
    syncing: bool = False


@dataclass
class _Snapshot:
    """What one write-back sends: a copy of the baseline and the counts it carries."""

    baseline: Baseline
    pending: int
    pending_refusals: int
    decided: bool


@dataclass
class _Merged:
    """What the database said back: others' counts in the same minute, and its switches."""

    window_start: datetime
    others: int
    refused: int
    switches: dict[str, Any]
    standing: dict[str, Any]


@dataclass
class AnomalyMonitor:
    """Per-identity baselines and the actions they call for (see ca/anomaly/policy.py)."""

    database: Database
    settings: Settings
    recorder: RecordSink
    revoke: Callable[..., Any] | None = None
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _defaults: tuple[float, store.Defaults] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stats_failing: bool = False
    _defaults_reading: bool = False

    def check(self, entry: _Entry, request: Request) -> None:
        """Count, decide, enforce; raise if a standing decision refuses ``request``."""
        if not self.settings.enabled:
            return
        sample = Sample(
            at=request.at,
            kind=request.kind,
            renewal=request.renewal,
            network=network_of(REQUEST_SOURCE.get()),
            audiences=tuple(request.audiences),
            source=source_of(request.selectors),
        )
        defaults = self._policy_defaults()
        self._refresh(entry.id, request.at)
        with self._lock:
            cached = self._cache[entry.id]
            baseline = cached.baseline
            if baseline.exempt:
                return
            learning = defaults.learn and not baseline.frozen
            advance(baseline, request.at, learning, self._refusal_cap(baseline))
            baseline.window_count += request.count
            cached.pending += request.count
            found = signals(baseline, sample, self.settings)
            action = decide(found, baseline.policy or defaults.policy)
            if learning:
                learn(baseline, sample)
            cached.dirty = True
            standing = Action.parse(baseline.action) if baseline.action else Action.NONE
            escalated = action > standing and action >= Action.THROTTLE
            if escalated:
                baseline.action = action.label
                baseline.reason = "; ".join(s.reason for s in found if s.action >= Action.OBSERVE)
                baseline.decided_at = request.at
                cached.decided = True
        if escalated or self.settings.sync_seconds == 0:
            self._refresh(entry.id, request.at, force=True)
        if action >= Action.OBSERVE and (escalated or action is Action.OBSERVE):
            self._announce(entry, action, found, request.at)
        if escalated and action is Action.DENY:
            self._deny(entry, baseline, request.at)
        self._enforce(entry, baseline, request)

    def refused(self, entry: _Entry, at: datetime) -> None:
        """Count a request for ``entry`` that the issuer refused; observe a jump in them.

        Not a refusal of the anomaly response itself (those are counted as
        requests already): this is a workload asking for what its entry
        does not allow, again and again, as a probing or misconfigured one does.
        """
        if not self.settings.enabled:
            return
        defaults = self._policy_defaults()
        self._refresh(entry.id, at)
        with self._lock:
            cached = self._cache[entry.id]
            baseline = cached.baseline
            if baseline.exempt:
                return
            learning = defaults.learn and not baseline.frozen
            advance(baseline, at, learning, self._refusal_cap(baseline))
            baseline.refusal_count += 1
            cached.pending_refusals += 1
            cached.dirty = True
            signal = refusals(baseline, self.settings)
            # Once a minute per process: every refusal past the limit is not news.
            if signal is not None and cached.refusals_observed == baseline.window_start:
                signal = None
            if signal is not None:
                cached.refusals_observed = baseline.window_start
        if self.settings.sync_seconds == 0:
            self._refresh(entry.id, at, force=True)
        if signal is not None:
            self._announce(entry, Action.OBSERVE, [signal], at)

    def _refusal_cap(self, baseline: Baseline) -> float | None:
        """Refusals above which a minute is not learned; None while still learning.

        While learning there is no band yet, so every minute counts: else an
        identity refused more often than the floor would never learn it.
        """
        return refusal_limit(baseline, self.settings) if learned(baseline, self.settings) else None

    def flush(self) -> None:
        """Write every baseline this process changed back to the database now."""
        with self._lock:
            dirty = [
                (key, cached.baseline.last_at or cached.baseline.window_start)
                for key, cached in self._cache.items()
                if cached.dirty
            ]
        for key, moment in dirty:
            self._refresh(key, moment, force=True)

    # -- decisions ------------------------------------------------------------

    def _announce(
        self, entry: _Entry, action: Action, found: Sequence[Signal], now: datetime
    ) -> None:
        for signal in found:
            metrics.DECISIONS.labels(action.label, signal.name).inc()
        self.recorder.commit(
            Issuance(
                None,
                None,
                [
                    audit.Event(
                        f"anomaly.{action.label}",
                        entry.spiffe_id,
                        ACTOR,
                        outcome="success",
                        detail={
                            "entry": entry.id,
                            "signals": [s.name for s in found],
                            "reason": "; ".join(s.reason for s in found),
                        },
                        at=now,
                    )
                ],
            )
        )

    def _deny(self, entry: _Entry, baseline: Baseline, now: datetime) -> None:
        """Disable the entry and revoke what it holds, as ``idmint revoke entry`` does.

        A subject with a ``deny`` of its own (an agent: ban it too) does that.
        """
        from idmint.ca.revocation.revocations import revoke_entry

        own = getattr(entry, "deny", None)
        if own is not None:
            own(self.database, ACTOR, now)
            return
        # Nothing to flush: every credential is on record before it leaves
        # (ca/storage/recorder.py), so revoke_entry sees all of them.
        (self.revoke or revoke_entry)(
            self.database, entry.id, ACTOR, "unspecified", now=now, sweep_after=0
        )

    def _enforce(self, entry: _Entry, baseline: Baseline, request: Request) -> None:
        if baseline.action is None:
            return  # the usual case
        action = Action.parse(baseline.action) if baseline.action else Action.NONE
        why = baseline.reason or "no reason recorded"
        if action is Action.DENY:
            metrics.REFUSED.labels(action.label).inc()
            raise AnomalyDenied(
                f"{entry.spiffe_id} was denied by the anomaly response ({why}); its entry is "
                f"disabled and its credentials revoked (idmint anomaly show {entry.id})"
            )
        if (
            action is Action.STEP_UP
            and request.renewal
            and not request.attested_since(baseline.decided_at)
        ):
            metrics.REFUSED.labels(action.label).inc()
            raise StepUpRequired(
                f"renewal of {entry.spiffe_id} by proof of possession is refused ({why}): "
                "attest afresh with new evidence"
            )
        if action >= Action.THROTTLE:
            limit = rate_limit(baseline, self.settings)
            if baseline.window_count > limit:
                metrics.REFUSED.labels(Action.THROTTLE.label).inc()
                raise AnomalyThrottled(
                    f"{entry.spiffe_id} is throttled to {limit:.0f}/min ({why}); "
                    "retry in the next minute"
                )

    # -- the cached rows --------------------------------------------------------

    def _policy_defaults(self) -> store.Defaults:
        """The trust domain's policy and learning switch, re-read every ``sync_seconds``.

        Called outside the lock; while one thread re-reads, the others use
        the value they have.
        """
        now = time.monotonic()
        found = self._defaults
        if found is not None and (
            now - found[0] < self.settings.sync_seconds or self._defaults_reading
        ):
            return found[1]
        self._defaults_reading = True
        try:
            with self.database.reading() as session:
                self._defaults = found = (now, store.defaults(session, self.settings))
        except (IdmintError, SQLAlchemyError):
            if found is None:
                raise
            log.warning("anomaly: the policy defaults were not re-read", exc_info=True)
        finally:
            self._defaults_reading = False
        return found[1]

    def _refresh(self, entry_id: str, now: datetime, force: bool = False) -> None:
        """Write the entry's counts back and re-read it, if due; I/O outside the lock.

        Not due: fresh enough, or another thread is at it (this one goes on
        with the copy in memory). ``force`` (a decision, or ``sync_seconds =
        0``) waits for such a thread and then writes with the full timeout:
        a decision must not be lost.
        """
        while True:
            with self._lock:
                cached = self._cache.get(entry_id)
                if cached is not None and cached.syncing and force:
                    pass  # wait below for the other thread's write-back
                elif cached is not None and (
                    cached.syncing
                    or (not force and time.monotonic() - cached.loaded < self.settings.sync_seconds)
                ):
                    return
                else:
                    snapshot = self._take(cached) if cached is not None else None
                    break
            time.sleep(0.001)
        if cached is None:
            self._load(entry_id, now)
            return
        try:
            if snapshot is not None:
                merged = self._write_back(snapshot, now, None if force else STATS_TIMEOUT)
                fresh = None
            else:
                merged, fresh = None, self._read(entry_id)
        except BaseException as error:
            # Whatever went wrong, the counts are kept and the entry is not
            # left "syncing" (a forced write would wait for it for ever).
            with self._lock:
                if snapshot is not None:  # kept for the next try
                    cached.pending += snapshot.pending
                    cached.pending_refusals += snapshot.pending_refusals
                    cached.decided = cached.decided or snapshot.decided
                    cached.dirty = True
                cached.loaded, cached.syncing = time.monotonic(), False
            if force or not isinstance(error, IdmintError | SQLAlchemyError):
                raise
            if not self._stats_failing:
                log.warning("anomaly: counts not written back (kept for the next try): %s", error)
            self._stats_failing = True
            return
        if self._stats_failing:
            log.warning("anomaly: counts written back again")
        self._stats_failing = False
        with self._lock:
            if merged is not None:
                self._apply(cached, merged)
            elif fresh is not None:
                self._adopt(cached, fresh)
            cached.loaded, cached.syncing = time.monotonic(), False

    @staticmethod
    def _take(cached: _Cached) -> _Snapshot | None:
        """Under the lock: mark ``cached`` as syncing and take what it has to write back."""
        cached.syncing = True
        if not cached.dirty:
            return None
        snapshot = _Snapshot(
            copy.deepcopy(cached.baseline), cached.pending, cached.pending_refusals, cached.decided
        )
        cached.pending, cached.pending_refusals = 0, 0
        cached.dirty, cached.decided = False, False
        return snapshot

    def _load(self, entry_id: str, now: datetime) -> None:
        baseline = self._read(entry_id) or store.fresh(entry_id, now)
        with self._lock:  # another thread may have loaded it meanwhile: keep that one
            self._cache.setdefault(entry_id, _Cached(baseline, time.monotonic()))

    def _read(self, entry_id: str) -> Baseline | None:
        with self.database.reading() as session:
            row = session.get(AnomalyBaseline, entry_id)
            return store.to_baseline(row) if row is not None else None

    def _adopt(self, cached: _Cached, fresh: Baseline) -> None:
        """Under the lock: take the row as read, with what this process counted meanwhile."""
        if fresh.window_start == cached.baseline.window_start:
            fresh.window_count += cached.pending
            fresh.refusal_count += cached.pending_refusals
        elif cached.pending or cached.pending_refusals:
            return  # our minute is newer than the row's: keep ours, written back next time
        if cached.decided:  # decided during the read: ours stands until written
            for name in store.STANDING:
                setattr(fresh, name, getattr(cached.baseline, name))
        cached.baseline = fresh

    def _apply(self, cached: _Cached, merged: _Merged) -> None:
        """Under the lock: others' counts of the same minute, operators' switches, decisions."""
        baseline = cached.baseline
        if baseline.window_start == merged.window_start:
            baseline.window_count += merged.others
            baseline.refusal_count += merged.refused
        for name, value in merged.switches.items():
            setattr(baseline, name, value)
        if not cached.decided:
            for name, value in merged.standing.items():
                setattr(baseline, name, value)

    def _write_back(self, snapshot: _Snapshot, now: datetime, timeout: float | None) -> _Merged:
        """Write ``snapshot`` back: its counts added to the row's, its stats (and decision)."""
        baseline = snapshot.baseline
        with self.database.session(timeout) as session:
            row = session.get(AnomalyBaseline, baseline.entry_id, with_for_update=True)
            if row is None:
                store.write(session, baseline, now, ())
                return _Merged(baseline.window_start, 0, 0, {}, {})
            same_window = row.window_start == baseline.window_start
            # What the row counted beyond what this process read plus its own.
            others = row.window_count - (baseline.window_count - snapshot.pending)
            refused = row.refusal_count - (baseline.refusal_count - snapshot.pending_refusals)
            others, refused = (max(others, 0), max(refused, 0)) if same_window else (0, 0)
            fields = store.STATS + (store.STANDING if snapshot.decided else ())
            store.write(session, baseline, now, fields)
            row.window_count = baseline.window_count + others
            row.refusal_count = baseline.refusal_count + refused
            # The database is authoritative for what operators set and for decisions
            # other processes took; they win unless this process just decided.
            return _Merged(
                baseline.window_start,
                others,
                refused,
                {name: getattr(row, name) for name in store.SWITCHES},
                {} if snapshot.decided else {n: getattr(row, n) for n in store.STANDING},
            )


def from_config(
    database: Database, section: Any, recorder: RecordSink, where: str = "idmint.toml"
) -> AnomalyMonitor:
    """The monitor the ``[anomaly]`` section asks for."""
    return AnomalyMonitor(database, Settings.from_section(section, where), recorder)


class AnomalyCheck(Protocol):
    """What the issuer calls before it signs."""

    def check(self, entry: Any, request: Request) -> None: ...

    def refused(self, entry: Any, at: datetime) -> None: ...


class NoCheck:
    """Anomaly response off."""

    def check(self, entry: Any, request: Request) -> None:
        return None

    def refused(self, entry: Any, at: datetime) -> None:
        return None
