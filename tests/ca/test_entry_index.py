"""The entry index: it matches as a scan of every entry would, and follows the change log.

Changes are made through a second ``Database`` on the same URL (another
worker or replica, as far as the index can tell), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from idmint.ca.issuance.agents import AgentView, authorized_entries
from idmint.ca.issuance.entries import (
    AmbiguousEntry,
    EntrySpec,
    EntryStore,
    EntryView,
    NoMatchingEntry,
    match,
)
from idmint.ca.issuance.entry_index import EntryIndex, load, refresh
from idmint.ca.issuance.issuer import Issuer
from idmint.ca.revocation.revocations import revoke_entry
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import EntryChange
from idmint.hsm import KeyStore

NOW = datetime.now(UTC)
LATER = NOW + timedelta(days=30)


def _spec(spiffe_id: str, selectors: list[str], **extra: object) -> EntrySpec:
    return EntrySpec(spiffe_id, selectors, "team", LATER, **extra)  # type: ignore[arg-type]


@pytest.fixture
def other(database_url: str) -> Iterator[Database]:
    """The same database as ``database``, opened a second time (another worker)."""
    second = Database(database_url)
    yield second
    second.close()


def _view(
    n: int,
    spiffe_id: str,
    selectors: tuple[str, ...],
    disabled: bool,
    parent_id: str | None = None,
    node_selectors: tuple[str, ...] = (),
) -> EntryView:
    return EntryView(
        id=f"id-{n:04d}",
        spiffe_id=spiffe_id,
        selectors=tuple(sorted(selectors)),
        owner="team",
        expires_at=LATER,
        x509_ttl_seconds=600,
        jwt_ttl_seconds=300,
        audiences=(),
        dns_names=(),
        admin=False,
        disabled=disabled,
        created_at=NOW,
        updated_at=NOW,
        parent_id=parent_id,
        node_selectors=tuple(sorted(node_selectors)),
    )


def _outcome(
    entries: object, selectors: list[str], spiffe_id: str | None, granted: str | None
) -> str:
    try:
        if isinstance(entries, EntryIndex):
            return entries.match(selectors, NOW, spiffe_id, granted).id
        return match(entries, selectors, NOW, spiffe_id, granted).id  # type: ignore[arg-type]
    except (NoMatchingEntry, AmbiguousEntry) as error:
        return type(error).__name__


def test_the_index_matches_as_a_scan_of_every_entry_does() -> None:
    """Random fleets with shared and own selectors; every query answered alike."""
    rng = random.Random(1234)
    pool = [f"k8s:ns:{n}" for n in range(4)] + [f"unix:uid:{n}" for n in range(40)]
    for _ in range(20):
        views = [
            _view(
                n,
                f"spiffe://example.org/w{rng.randrange(25)}",
                tuple(rng.sample(pool, rng.randint(1, 3))),
                rng.random() < 0.1,
            )
            for n in range(120)
        ]
        index = EntryIndex(Database("sqlite://"))
        # Filed in two batches, so some are filed before the counts are known.
        index.apply(1, views[:60], [])
        index.apply(2, views[60:], [])
        assert len(index) == 120
        for _ in range(200):
            have = rng.sample(pool, rng.randint(1, 6))
            named = rng.choice([None, f"spiffe://example.org/w{rng.randrange(25)}"])
            granted = rng.choice([None, None, f"spiffe://example.org/w{rng.randrange(25)}"])
            assert _outcome(index, have, named, granted) == _outcome(views, have, named, granted)


def _agent(n: int, node_selectors: list[str]) -> AgentView:
    return AgentView(
        spiffe_id=f"spiffe://example.org/idmint/agent/join_token/a{n}",
        attestation_type="join_token",
        selectors=tuple(sorted(node_selectors)),
        entry_id=f"agent-entry-{n}",
        serial=None,
        key_sha256=None,
        svid_expires_at=None,
        attested_at=NOW,
        seen_at=NOW,
        banned=False,
        banned_at=None,
    )


def test_an_agents_entries_from_the_index_are_those_a_scan_finds() -> None:
    """Parented, node-selector and direct entries; each agent's set as a full scan gives it."""
    rng = random.Random(99)
    nodes = [f"k8s_psat:cluster:c{n}" for n in range(3)] + [f"oidc:repo:r{n}" for n in range(5)]
    agents = [_agent(n, rng.sample(nodes, rng.randint(0, 3))) for n in range(8)]
    for _ in range(10):
        views = []
        for n in range(300):
            kind = rng.random()
            parent = rng.choice(agents).spiffe_id if kind < 0.4 else None
            targets = tuple(rng.sample(nodes, rng.randint(1, 2))) if 0.3 < kind < 0.7 else ()
            views.append(
                _view(
                    n,
                    f"spiffe://example.org/w{n}",
                    (f"unix:uid:{rng.randrange(5)}",),
                    rng.random() < 0.1,
                    parent,
                    targets,
                )
            )
        index = EntryIndex(Database("sqlite://"))
        index.apply(1, views[:150], [])
        index.apply(2, views[150:], [views[3].id])  # and one taken out again
        kept = [v for v in views if v.id != views[3].id]
        for agent in agents:
            from_index = sorted(e.id for e in authorized_entries(index, agent, NOW))
            from_scan = sorted(e.id for e in authorized_entries(kept, agent, NOW))
            assert from_index == from_scan
        assert any(authorized_entries(index, agent, NOW) for agent in agents)


def test_an_agents_entries_survive_a_load_from_the_database(
    database: Database, trust_domain: TrustDomain
) -> None:
    store = EntryStore(database, trust_domain)
    agent = _agent(1, ["k8s_psat:cluster:prod"])
    parented = store.create(
        _spec("spiffe://example.org/p", ["unix:uid:1"], parent_id=agent.spiffe_id), "t"
    )
    by_node = store.create(
        _spec("spiffe://example.org/n", ["unix:uid:2"], node_selectors=["k8s_psat:cluster:prod"]),
        "t",
    )
    store.create(
        _spec(
            "spiffe://example.org/other", ["unix:uid:3"], node_selectors=["k8s_psat:cluster:dev"]
        ),
        "t",
    )
    store.create(_spec("spiffe://example.org/direct", ["unix:uid:1"]), "t")
    served = authorized_entries(load(database), agent, NOW)
    assert sorted(e.id for e in served) == sorted([parented.id, by_node.id])


def test_an_entry_is_filed_under_its_rarest_selector() -> None:
    shared = [_view(n, f"spiffe://example.org/f{n}", ("k8s:ns:prod", f"k8s:sa:{n}"), False)
              for n in range(1000)]  # fmt: skip
    index = EntryIndex(Database("sqlite://"))
    index.apply(1, shared, [])
    # A workload presenting the shared selector gets only its own entry as a candidate.
    found = index.candidates(["k8s:ns:prod", "k8s:sa:7"])
    assert [v.spiffe_id for v in found] == ["spiffe://example.org/f7"]


def test_changes_through_another_worker_reach_the_index(
    database: Database, other: Database, trust_domain: TrustDomain
) -> None:
    store = EntryStore(other, trust_domain)
    first = store.create(_spec("spiffe://example.org/web", ["k8s:ns:prod", "k8s:sa:web"]), "t")
    index = load(database)
    assert index.match(["k8s:ns:prod", "k8s:sa:web"], NOW).id == first.id

    second = store.create(_spec("spiffe://example.org/api", ["k8s:sa:api"]), "t")
    assert refresh(index, database) is index  # in place, not reloaded
    assert index.match(["k8s:sa:api"], NOW).id == second.id

    store.update(first.id, {"selectors": ["k8s:sa:web2"]}, "t")
    refresh(index, database)
    with pytest.raises(NoMatchingEntry):
        index.match(["k8s:ns:prod", "k8s:sa:web"], NOW)
    assert index.match(["k8s:sa:web2"], NOW).id == first.id

    revoke_entry(other, second.id, "t", sweep_after=0)  # disables the entry
    refresh(index, database)
    with pytest.raises(NoMatchingEntry):
        index.match(["k8s:sa:api"], NOW)

    store.delete(second.id, "t")
    refresh(index, database)
    assert index.get(second.id) is None
    assert index.for_spiffe_id("spiffe://example.org/api") == []
    assert sorted(v.id for v in index) == [first.id]


def test_a_change_log_cut_short_reloads_the_index(
    database: Database, other: Database, trust_domain: TrustDomain
) -> None:
    store = EntryStore(other, trust_domain)
    store.create(_spec("spiffe://example.org/a", ["unix:uid:1"]), "t")
    index = load(database)
    store.create(_spec("spiffe://example.org/b", ["unix:uid:2"]), "t")
    store.create(_spec("spiffe://example.org/c", ["unix:uid:3"]), "t")
    with other.session() as session:  # as pruning would, past this index's revision
        newest = session.scalar(select(func.max(EntryChange.revision)))
        session.execute(delete(EntryChange).where(EntryChange.revision < newest))
    reloaded = refresh(index, database)
    assert reloaded is not index
    assert sorted(v.spiffe_id for v in reloaded) == [
        "spiffe://example.org/a",
        "spiffe://example.org/b",
        "spiffe://example.org/c",
    ]


def test_refreshing_does_not_wait_for_the_write_turn(
    database: Database, other: Database, trust_domain: TrustDomain
) -> None:
    """Another worker holding the write turn (SQLite's cross-process lock) holds no refresh up."""
    store = EntryStore(other, trust_domain)
    store.create(_spec("spiffe://example.org/a", ["unix:uid:1"]), "t")
    index = load(database)
    store.create(_spec("spiffe://example.org/b", ["unix:uid:2"]), "t")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with other.session():
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        done = threading.Event()

        def run() -> None:
            refresh(index, database)
            done.set()

        refresher = threading.Thread(target=run)
        refresher.start()
        assert done.wait(10), "the refresh waited for another process's write turn"
        assert index.match(["unix:uid:2"], NOW).spiffe_id == "spiffe://example.org/b"
    finally:
        release.set()
        holder.join()


def test_an_issuer_with_a_long_cache_finds_a_new_entry_at_once(
    keystore: KeyStore,
    database: Database,
    other: Database,
    authorities: None,
    trust_domain: TrustDomain,
) -> None:
    issuer = Issuer(keystore, database, trust_domain, "https://idmint.test", cache_seconds=3600)
    try:
        store = EntryStore(other, trust_domain)
        store.create(_spec("spiffe://example.org/a", ["unix:uid:1"], audiences=["x"]), "t")
        assert issuer.issue_jwt(["unix:uid:1"], ["x"]).spiffe_id == "spiffe://example.org/a"
        # Made through "another worker" after this issuer cached its state.
        store.create(_spec("spiffe://example.org/b", ["unix:uid:2"], audiences=["x"]), "t")
        assert issuer.issue_jwt(["unix:uid:2"], ["x"]).spiffe_id == "spiffe://example.org/b"
        # Kept across invalidate(): the index is refreshed, not read again whole.
        index = issuer.state().entries
        issuer.invalidate()
        assert issuer.state().entries is index
    finally:
        issuer.close()
