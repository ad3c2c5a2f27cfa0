"""Anomaly response on the real issuance path (SoftHSM, SQLite/PostgreSQL), simulated clock.

Learning phases feed the same monitor the issuer calls (no HSM signature
needed to learn); the phases that act go through ``Issuer.issue_*`` itself.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from idmint.ca.anomaly import store
from idmint.ca.anomaly.baseline import network_of, source_of
from idmint.ca.anomaly.errors import AnomalyDenied, AnomalyThrottled, StepUpRequired
from idmint.ca.anomaly.monitor import REQUEST_SOURCE, AnomalyMonitor, Request
from idmint.ca.anomaly.policy import Settings
from idmint.ca.authority.authorities import active, signing_key
from idmint.ca.errors import AudienceNotAllowed
from idmint.ca.issuance.entries import EntrySpec, EntryStore, EntryView, NoMatchingEntry
from idmint.ca.issuance.issuer import Issuer
from idmint.ca.revocation.crl import build_crl
from idmint.ca.revocation.ocsp import respond
from idmint.ca.revocation.revocations import revoked_identifiers
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AnomalyBaseline, AuditEvent, AuthorityKind, CredentialKind
from idmint.ca.storage.recorder import Recorder
from idmint.hsm import KeyStore

START = datetime(2026, 11, 1, tzinfo=UTC)
CI_MAIN = ("oidc:ci:ref:refs/heads/main", "oidc:ci:repository:org/app")


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    issuer: Issuer
    monitor: AnomalyMonitor
    clock: Clock
    entries: EntryStore
    database: Database
    recorder: Recorder


@pytest.fixture
def world(
    keystore: KeyStore, database: Database, authorities: None, trust_domain: TrustDomain
) -> Iterator[World]:
    recorder = Recorder(database)
    monitor = AnomalyMonitor(database, Settings(sync_seconds=0), recorder)
    clock = Clock()
    issuer = Issuer(
        keystore,
        database,
        trust_domain,
        "https://idmint.test",
        recorder=recorder,
        cache_seconds=0,
        clock=clock,
        anomaly=monitor,
    )
    yield World(issuer, monitor, clock, EntryStore(database, trust_domain), database, recorder)
    recorder.close()


def _entry(world: World, name: str, selectors: tuple[str, ...], **extra: object) -> EntryView:
    spec = EntrySpec(
        spiffe_id=f"spiffe://example.org/{name}",
        selectors=selectors,
        owner="tests",
        expires_at=START + timedelta(days=60),
        **extra,  # type: ignore[arg-type]
    )
    return world.entries.create(spec, actor="tests", now=START - timedelta(days=1))


def _csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


CSR = _csr()


def _learn_week(
    world: World,
    entry: EntryView,
    selectors: tuple[str, ...] = (),
    audiences: tuple[str, ...] = (),
    kind: str = "x509",
    jitter: float = 30.0,
    seed: int = 1,
    refusals: int = 0,
    hours: range = range(24),
) -> None:
    """A renewal every 5 minutes (+- jitter) for a simulated week, from one network.

    Through a monitor that keeps the baseline in memory (as server workers
    do between syncs) and writes it back at the end. With ``refusals``, each
    renewal comes with that many refused requests; only in ``hours`` (UTC).
    """
    rng = random.Random(seed)
    REQUEST_SOURCE.set("10.1.2.3")
    learner = AnomalyMonitor(world.database, Settings(sync_seconds=1e9), world.recorder)
    moment = START
    while moment < START + timedelta(days=7):
        world.clock.now = moment
        if moment.hour in hours:
            learner.check(entry, Request(kind, moment, selectors, audiences))
            for _ in range(refusals):
                learner.refused(entry, moment)
        moment += timedelta(seconds=300 + rng.uniform(-jitter, jitter))
    learner.flush()


def _events(world: World, prefix: str) -> list[AuditEvent]:
    with world.database.reading() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.startswith(prefix))
                .order_by(AuditEvent.seq)
            )
        )


def test_sources_and_networks_are_read_from_selectors_and_addresses() -> None:
    assert network_of("10.1.2.3") == "10.1.2.0/24"
    assert network_of("2001:db8::1") == "2001:db8::/64"
    assert network_of("not an address") is None
    assert source_of(("unix:uid:1000", *CI_MAIN)) == " ".join(CI_MAIN)
    assert (
        source_of(("k8s:ns:prod", "k8s:sa:web", "k8s:cluster:eu")) == "k8s:cluster:eu k8s:ns:prod"
    )
    assert source_of(("unix:uid:1000",)) is None


def test_a_steady_week_with_jitter_triggers_nothing(world: World) -> None:
    entry = _entry(world, "steady", ("unix:uid:1000",))
    _learn_week(world, entry, jitter=60.0, seed=7)
    baseline = store.get(world.database, entry.id)
    assert baseline.action is None and baseline.reason is None
    assert 1900 < baseline.samples < 2100
    # About one issuance per 5 minutes: 0.2/min.
    assert 0.15 < baseline.rate_mean < 0.25
    assert 250 < baseline.interval_mean < 350
    assert baseline.networks == ["10.1.2.0/24"]
    assert _events(world, "anomaly.") == []
    # The week goes on the same way, now through the issuer: still nothing.
    for _ in range(12):
        world.clock.now += timedelta(seconds=300)
        world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
    assert store.get(world.database, entry.id).action is None


@pytest.mark.slow
def test_a_burst_after_a_week_is_throttled_then_stepped_up(world: World) -> None:
    entry = _entry(world, "burst", ("unix:uid:1001",))
    _learn_week(world, entry)
    minute = (START + timedelta(days=7, hours=1)).replace(second=0, microsecond=0)
    outcomes: list[str] = []

    def renew_at(moment: datetime) -> None:
        world.clock.now = moment
        try:
            world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
            outcomes.append("ok")
        except AnomalyThrottled:
            outcomes.append("throttled")
        except StepUpRequired:
            outcomes.append("step-up")

    # 100 renewals in one minute: the first few pass, then throttled.
    for i in range(100):
        renew_at(minute + timedelta(seconds=i * 0.6))
    assert outcomes[:5] == ["ok"] * 5
    assert set(outcomes[5:]) == {"throttled"}
    baseline = store.get(world.database, entry.id)
    assert baseline.action == "throttle"
    assert baseline.reason is not None
    assert baseline.reason.startswith("rate 6/min vs baseline 0.2/min +- ")
    assert "(limit 5.0/min)" in baseline.reason
    # It goes on in the next minute: stepped up; renewal by proof is refused.
    outcomes.clear()
    for i in range(100):
        renew_at(minute + timedelta(seconds=60 + i * 0.6))
    assert outcomes[:5] == ["ok"] * 5 and set(outcomes[5:]) == {"step-up"}
    baseline = store.get(world.database, entry.id)
    assert baseline.action == "step-up" and "again after being throttled" in (baseline.reason or "")
    # Fresh attestation still works (within the throttle), a renewal does not.
    world.clock.now = minute + timedelta(minutes=5)
    world.issuer.issue_x509(("unix:uid:1001",), CSR)
    with pytest.raises(StepUpRequired, match="attest afresh"):
        world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
    # The burst minutes were not learned as normal.
    assert baseline.rate_mean < 0.5
    actions = [e.action for e in _events(world, "anomaly.")]
    assert actions == ["anomaly.throttle", "anomaly.step-up"]
    refused = _events(world, "x509-svid.issue")
    assert any(e.outcome == "refused" and "AnomalyThrottled" in e.detail for e in refused)
    # An operator clears it; renewals work again.
    store.clear(world.database, entry.id, "tests")
    world.clock.now += timedelta(minutes=5)
    world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)


def test_a_ci_identity_attesting_from_another_ref_is_stepped_up(world: World) -> None:
    entry = _entry(world, "ci", ("oidc:ci:repository:org/app",))
    _learn_week(world, entry, selectors=CI_MAIN)
    world.clock.now = START + timedelta(days=7, hours=2)
    other = ("oidc:ci:ref:refs/heads/evil", "oidc:ci:repository:org/app")
    svid = world.issuer.issue_x509(other, CSR)  # the attestation itself was valid
    baseline = store.get(world.database, entry.id)
    assert baseline.action == "step-up"
    assert baseline.reason == (
        "attestation from a new source 'oidc:ci:ref:refs/heads/evil oidc:ci:repository:org/app' "
        "(seen: oidc:ci:ref:refs/heads/main oidc:ci:repository:org/app)"
    )
    # ...but what it got cannot renew itself: the next one must attest afresh.
    with pytest.raises(StepUpRequired):
        world.issuer.issue_x509((), CSR, granted=svid.spiffe_id)


def test_deny_reaches_another_workers_entry_index(
    world: World, keystore: KeyStore, database_url: str, trust_domain: TrustDomain
) -> None:
    """The entry that ``deny`` disables is refused by another worker within its cache time.

    The other worker checks no anomalies itself: what stops it is the
    disabled entry reaching its entry index through the change log.
    """
    cache = 0.3
    other = Database(database_url)
    watcher = Issuer(
        keystore, other, trust_domain, "https://idmint.test", cache_seconds=cache, clock=world.clock
    )
    try:
        entry = _entry(world, "deny2", ("oidc:ci:repository:org/app",))
        _learn_week(world, entry, selectors=CI_MAIN)
        store.set_policy(world.database, entry.id, "tests", policy="deny")
        world.clock.now = START + timedelta(days=7, hours=4)
        assert watcher.issue_x509(CI_MAIN, CSR).spiffe_id == entry.spiffe_id  # warm
        other_ref = ("oidc:ci:ref:refs/heads/evil", "oidc:ci:repository:org/app")
        with pytest.raises(AnomalyDenied):
            world.issuer.issue_x509(other_ref, CSR)
        time.sleep(cache + 0.05)  # every state the watcher cached before has expired
        with pytest.raises(NoMatchingEntry):
            watcher.issue_x509(CI_MAIN, CSR)
    finally:
        watcher.close()
        other.close()


def test_a_new_audience_for_a_stable_service_is_observed(world: World) -> None:
    entry = _entry(world, "api", ("unix:uid:1002",))
    _learn_week(world, entry, selectors=("unix:uid:1002",), audiences=("https://a",), kind="jwt")
    world.clock.now = START + timedelta(days=7, hours=3)
    token = world.issuer.issue_jwt(("unix:uid:1002",), ["https://a", "https://new"])
    assert token.audiences == ("https://a", "https://new")  # observed, not refused
    baseline = store.get(world.database, entry.id)
    assert baseline.action is None
    (observed,) = _events(world, "anomaly.")
    assert observed.action == "anomaly.observe"
    assert "new audience(s) ['https://new'] (seen: https://a)" in observed.detail
    # Learned: the same audience next time is not news.
    world.clock.now += timedelta(minutes=5)
    world.issuer.issue_jwt(("unix:uid:1002",), ["https://new"])
    assert len(_events(world, "anomaly.")) == 1


def test_deny_disables_the_entry_and_revokes_into_crl_and_ocsp(
    world: World, keystore: KeyStore
) -> None:
    entry = _entry(world, "deny", ("oidc:ci:repository:org/app",))
    _learn_week(world, entry, selectors=CI_MAIN)
    store.set_policy(world.database, entry.id, "tests", policy="deny")
    world.clock.now = START + timedelta(days=7, hours=4)
    before = world.issuer.issue_x509(CI_MAIN, CSR)  # normal: issued and outstanding
    world.clock.now += timedelta(seconds=30)
    other = ("oidc:ci:ref:refs/heads/evil", "oidc:ci:repository:org/app")
    with pytest.raises(AnomalyDenied, match="attestation from a new source"):
        world.issuer.issue_x509(other, CSR)
    assert world.entries.get(entry.id).disabled
    with pytest.raises((AnomalyDenied, NoMatchingEntry)):
        world.issuer.issue_x509(CI_MAIN, CSR)
    revoked = revoked_identifiers(world.database, CredentialKind.X509, world.clock.now)
    assert [serial for serial, _, _ in revoked] == [before.serial]
    # The CRL and the OCSP responder say so (built as the server builds them).
    ca = active(world.database, AuthorityKind.INTERMEDIATE)
    assert ca.certificate_pem is not None
    ca_cert = x509.load_pem_x509_certificate(ca.certificate_pem.encode())
    key = signing_key(keystore, ca)
    crl = x509.load_der_x509_crl(build_crl(ca_cert, key, revoked, world.clock.now))
    assert crl.get_revoked_certificate_by_serial_number(int(before.serial, 16)) is not None
    from cryptography.x509 import ocsp

    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(before.certificate, ca_cert, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )

    def lookup(serial: str) -> tuple[str, datetime | None, str | None] | None:
        found = [(at, reason) for s, at, reason in revoked if s == serial]
        return ("revoked", *found[0]) if found else ("good", None, None)

    answer = ocsp.load_der_ocsp_response(
        respond(request, [(ca_cert, key)], lookup, world.clock.now)
    )
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    actions = [e.action for e in _events(world, "anomaly.")]
    assert actions[-1] == "anomaly.deny"
    assert [e.actor for e in _events(world, "revoke.entry")] == ["system:anomaly"]


def test_exempt_entries_and_frozen_learning(world: World) -> None:
    entry = _entry(world, "exempt", ("oidc:ci:repository:org/app",))
    _learn_week(world, entry, selectors=CI_MAIN)
    store.set_policy(world.database, entry.id, "tests", exempt=True)
    world.clock.now = START + timedelta(days=7, hours=5)
    world.issuer.issue_x509(("oidc:ci:ref:refs/heads/x", "oidc:ci:repository:org/app"), CSR)
    assert store.get(world.database, entry.id).action is None
    # Frozen learning: nothing new is learned, detection still works.
    store.set_policy(world.database, entry.id, "tests", exempt=False)
    store.set_policy(world.database, None, "tests", learn=False)
    samples = store.get(world.database, entry.id).samples
    world.clock.now += timedelta(minutes=5)
    world.issuer.issue_x509(CI_MAIN, CSR)
    assert store.get(world.database, entry.id).samples == samples
    world.issuer.issue_x509(("oidc:ci:ref:refs/heads/y", "oidc:ci:repository:org/app"), CSR)
    with pytest.raises(StepUpRequired):
        world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
    assert store.get(world.database, entry.id).action == "step-up"


def test_observe_only_policy_never_refuses(world: World) -> None:
    entry = _entry(world, "observer", ("unix:uid:1003",))
    _learn_week(world, entry)
    store.set_policy(world.database, entry.id, "tests", policy="observe")
    minute = START + timedelta(days=7, hours=6)
    for i in range(30):
        world.clock.now = minute + timedelta(seconds=i)
        world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
    assert store.get(world.database, entry.id).action is None


def test_a_locked_database_neither_fails_nor_holds_up_a_check(tmp_path: Path) -> None:
    """Counts are written back best-effort: a database held by another process costs
    a check at most STATS_TIMEOUT, not the database timeout, and no count is lost."""
    from idmint.ca.storage.db import migrate

    url = f"sqlite:///{tmp_path / 'idmint.db'}"
    migrate(url)
    database = Database(url, timeout=30.0)  # a stuck write would show as a 30 s wait
    monitor = AnomalyMonitor(database, Settings(sync_seconds=0.05), Recorder(database))
    entry = SimpleNamespace(id="entry-1", spiffe_id="spiffe://example.org/locked")
    REQUEST_SOURCE.set("10.1.2.3")
    monitor.check(entry, Request("x509", START))  # read, counted, not yet written
    holder = sqlite3.connect(tmp_path / "idmint.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        for n in range(1, 4):
            time.sleep(0.06)  # past sync_seconds: each check tries to write back
            monitor.check(entry, Request("x509", START + timedelta(seconds=n)))
        held_up = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert held_up < 10.0, f"checks waited {held_up:.1f} s for a locked database"
    time.sleep(0.06)
    monitor.check(entry, Request("x509", START + timedelta(seconds=5)))  # writes back now
    with database.reading() as session:
        row = session.get(AnomalyBaseline, "entry-1")
        assert row is not None
        assert row.window_count == 4  # the three made while locked were kept
    database.close()


def _refused_audiences(world: World, entry: EntryView, times: int) -> None:
    for _ in range(times):
        with pytest.raises(AudienceNotAllowed):
            world.issuer.issue_jwt(("unix:uid:1004",), ["https://not-allowed"])


def test_refusals_far_above_the_baseline_are_observed(world: World) -> None:
    entry = _entry(world, "refused", ("unix:uid:1004",), audiences=("https://a",))
    _learn_week(world, entry, selectors=("unix:uid:1004",), audiences=("https://a",), kind="jwt")
    baseline = store.get(world.database, entry.id)
    assert baseline.refusal_mean == 0.0 and baseline.action is None
    minute = START + timedelta(days=7, hours=1)
    world.clock.now = minute
    # Five refused requests in a minute are within the floor of the band...
    _refused_audiences(world, entry, 5)
    assert _events(world, "anomaly.") == []
    # ...the sixth is news, once for the minute, and refuses nothing more.
    _refused_audiences(world, entry, 10)
    (observed,) = _events(world, "anomaly.")
    assert observed.action == "anomaly.observe" and observed.subject == entry.spiffe_id
    detail = json.loads(observed.detail)
    assert detail["signals"] == ["refusals"]
    assert detail["reason"] == "refusals 6/min vs baseline 0.0/min +- 0.0 (limit 5.0/min)"
    world.issuer.issue_jwt(("unix:uid:1004",), ["https://a"])
    assert store.get(world.database, entry.id).action is None
    # The next minute starts counting afresh; the burst was not learned as usual.
    world.clock.now = minute + timedelta(minutes=1)
    _refused_audiences(world, entry, 3)
    assert len(_events(world, "anomaly.")) == 1
    assert store.get(world.database, entry.id).refusal_mean < 0.01


def test_refusals_are_measured_against_the_identitys_own_band(world: World) -> None:
    """An entry that is always refused 8 times every 5 minutes: 10 is usual, 16 is not."""
    entry = _entry(world, "noisy", ("unix:uid:1004",), audiences=("https://a",))
    _learn_week(
        world, entry, selectors=("unix:uid:1004",), audiences=("https://a",), kind="jwt", refusals=8
    )
    baseline = store.get(world.database, entry.id)
    assert 1.4 < baseline.refusal_mean < 1.8 and 3.0 < baseline.refusal_std < 3.4
    assert _events(world, "anomaly.") == []  # the week itself was usual
    world.clock.now = START + timedelta(days=7, hours=1)
    _refused_audiences(world, entry, 10)
    assert _events(world, "anomaly.") == []
    world.clock.now += timedelta(minutes=1)
    _refused_audiences(world, entry, 16)
    (observed,) = _events(world, "anomaly.")
    reason = json.loads(observed.detail)["reason"]
    assert re.fullmatch(
        r"refusals 1[45]/min vs baseline 1\.[4-8]/min \+- 3\.[0-4] \(limit 1[34]/min\)", reason
    ), reason


def test_issuance_at_an_hour_never_seen_in_a_week_is_observed(world: World) -> None:
    entry = _entry(world, "office", ("unix:uid:1005",))
    _learn_week(world, entry, hours=range(8, 18))
    baseline = store.get(world.database, entry.id)
    assert baseline.active_hours() == list(range(8, 18))
    assert _events(world, "anomaly.") == []
    # Within its hours: nothing.
    world.clock.now = START + timedelta(days=7, hours=9)
    world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
    assert _events(world, "anomaly.") == []
    # At 03:00 UTC, never seen in the week learned: observed, not refused.
    world.clock.now = START + timedelta(days=8, hours=3, minutes=10)
    world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
    (observed,) = _events(world, "anomaly.")
    assert observed.action == "anomaly.observe"
    detail = json.loads(observed.detail)
    assert detail["signals"] == ["hours"]
    assert detail["reason"] == (
        "issuance at 03:00-03:59 UTC, an hour never seen in 8 days (active hours UTC: 08-17)"
    )
    assert store.get(world.database, entry.id).action is None
    # Learned: the same hour again is not news.
    world.clock.now += timedelta(minutes=5)
    world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
    assert len(_events(world, "anomaly.")) == 1


def test_hours_are_not_news_before_a_week_of_them(world: World) -> None:
    entry = _entry(world, "young", ("unix:uid:1006",))
    _learn_week(world, entry, hours=range(8, 18))
    # As a row from before hours were kept: counting starts two days ago.
    with world.database.session() as session:
        row = session.get(AnomalyBaseline, entry.id)
        assert row is not None
        row.hours_since = START + timedelta(days=5)
    world.clock.now = START + timedelta(days=7, hours=3)
    world.issuer.issue_x509((), CSR, granted=entry.spiffe_id)
    assert _events(world, "anomaly.") == []


def test_counts_from_many_threads_and_processes_add_up_while_they_sync(tmp_path: Path) -> None:
    """Two monitors (two worker processes) of 4 threads each count one entry in one
    minute while writing back every 10 ms: no count is lost or counted twice, and
    one thread's write-back never makes another wait for the database."""
    import threading

    from idmint.ca.storage.db import migrate

    url = f"sqlite:///{tmp_path / 'idmint.db'}"
    migrate(url)
    databases = [Database(url), Database(url)]
    monitors = [AnomalyMonitor(db, Settings(sync_seconds=0.01), Recorder(db)) for db in databases]
    entry = SimpleNamespace(id="entry-threads", spiffe_id="spiffe://example.org/threads")
    per_thread = 300

    def work(monitor: AnomalyMonitor, seed: int) -> None:
        rng = random.Random(seed)
        for n in range(per_thread):
            monitor.check(entry, Request("x509", START + timedelta(seconds=n % 50)))
            if rng.random() < 0.05:
                time.sleep(0.002)

    threads = [
        threading.Thread(target=work, args=(monitor, n)) for n, monitor in enumerate(monitors * 4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for monitor in monitors:
        monitor.flush()
    with databases[0].reading() as session:
        row = session.get(AnomalyBaseline, entry.id)
        assert row is not None and row.window_count == len(threads) * per_thread
    for db in databases:
        db.close()


def test_an_unexpected_error_in_a_write_back_keeps_the_counts_and_the_next_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write-back that fails in a way nobody planned for must not leave the entry
    marked as syncing: every later sync would be skipped and a decision's forced
    write would wait for ever."""
    from idmint.ca.storage.db import migrate

    url = f"sqlite:///{tmp_path / 'idmint.db'}"
    migrate(url)
    database = Database(url)
    monitor = AnomalyMonitor(database, Settings(sync_seconds=0.01), Recorder(database))
    entry = SimpleNamespace(id="entry-odd", spiffe_id="spiffe://example.org/odd")
    monitor.check(entry, Request("x509", START))
    real = monitor._write_back
    calls = {"n": 0}

    def once_broken(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(monitor, "_write_back", once_broken)
    time.sleep(0.02)
    with pytest.raises(RuntimeError, match="disk on fire"):
        monitor.check(entry, Request("x509", START + timedelta(seconds=1)))
    time.sleep(0.02)
    monitor.check(entry, Request("x509", START + timedelta(seconds=2)))  # syncs again
    monitor.flush()
    with database.reading() as session:
        row = session.get(AnomalyBaseline, entry.id)
        assert row is not None and row.window_count == 2  # the first two; the raising one not
    database.close()
