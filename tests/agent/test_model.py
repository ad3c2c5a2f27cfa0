"""Parented entries: the migration, validation and matching (no server needed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from idmint.ca.issuance.agents import AgentView, authorized_entries
from idmint.ca.issuance.entries import (
    EntrySpec,
    EntryStore,
    EntryView,
    InvalidEntry,
    NoMatchingEntry,
    match,
    via_agent_selectors,
)
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database, alembic_config

TD = TrustDomain("example.org")
AGENT = "spiffe://example.org/idmint/agent/join_token/a"
OTHER = "spiffe://example.org/idmint/agent/join_token/b"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'idmint.db'}"
        return
    from tests.pg import fresh_database

    with fresh_database(request.getfixturevalue("pg_server")) as url:
        yield url


def test_migration_keeps_existing_entries_parentless(empty_url: str) -> None:
    config = alembic_config(empty_url)
    command.upgrade(config, "0005")
    database = Database(empty_url)
    try:
        with database.connection() as connection:
            connection.execute(
                text(
                    "INSERT INTO entries (id, spiffe_id, selectors, x509_ttl_seconds, "
                    "jwt_ttl_seconds, audiences, dns_names, owner, expires_at, admin, disabled, "
                    "created_at, updated_at) VALUES ('e1', 'spiffe://example.org/old', "
                    "'[\"k8s:ns:prod\"]', 600, 300, '[]', '[]', 'ops', :t, false, false, :t, :t)"
                ),
                {"t": datetime(2030, 1, 1)},
            )
        command.upgrade(config, "head")
        database.engine.dispose()
        (old,) = EntryStore(database, TD).list()
        assert (old.parent_id, old.node_selectors, old.parented) == (None, (), False)
        command.downgrade(config, "0005")
        database.engine.dispose()
        with database.reading() as session:
            assert session.execute(text("SELECT count(*) FROM entries")).scalar() == 1
    finally:
        database.close()


def _view(spiffe_id: str, selectors: list[str], **extra: object) -> EntryView:
    fields: dict[str, object] = {
        "id": spiffe_id.rsplit("/", 1)[-1] + "-" + "-".join(selectors),
        "spiffe_id": spiffe_id,
        "selectors": tuple(selectors),
        "owner": "t",
        "expires_at": NOW + timedelta(days=1),
        "x509_ttl_seconds": 600,
        "jwt_ttl_seconds": 300,
        "audiences": (),
        "dns_names": (),
        "admin": False,
        "disabled": False,
        "created_at": NOW,
        "updated_at": NOW,
    }
    fields.update(extra)
    return EntryView(**fields)  # type: ignore[arg-type]


def _agent(spiffe_id: str, selectors: tuple[str, ...] = ()) -> AgentView:
    return AgentView(
        spiffe_id, "join_token", selectors, "e", None, None, None, NOW, NOW, False, None
    )


ENTRIES = [
    _view("spiffe://example.org/direct", ["unix:uid:0"]),
    _view("spiffe://example.org/mine", ["unix:uid:0"], parent_id=AGENT),
    _view("spiffe://example.org/theirs", ["unix:uid:0"], parent_id=OTHER),
    _view("spiffe://example.org/cluster", ["unix:uid:0"], node_selectors=("k8s:cluster:prod",)),
]


def test_direct_requests_never_match_parented_entries() -> None:
    assert match(ENTRIES, ["unix:uid:0"], NOW).spiffe_id == "spiffe://example.org/direct"
    with pytest.raises(NoMatchingEntry):
        match(ENTRIES, ["unix:uid:0"], NOW, granted="spiffe://example.org/mine")


def test_agent_requests_match_only_that_agents_entries() -> None:
    via = via_agent_selectors(AGENT, ())
    found = match(ENTRIES, ["unix:uid:0", *via], NOW, spiffe_id="spiffe://example.org/mine")
    assert found.spiffe_id == "spiffe://example.org/mine"
    for other in ("direct", "theirs", "cluster"):
        with pytest.raises(NoMatchingEntry):
            match(ENTRIES, ["unix:uid:0", *via], NOW, spiffe_id=f"spiffe://example.org/{other}")


def test_node_selectors_reach_every_agent_that_has_them() -> None:
    prod = _agent(OTHER, ("k8s:cluster:prod", "k8s:ns:kube-system"))
    served = [e.spiffe_id for e in authorized_entries(ENTRIES, prod, NOW)]
    assert served == ["spiffe://example.org/theirs", "spiffe://example.org/cluster"]
    mine = [e.spiffe_id for e in authorized_entries(ENTRIES, _agent(AGENT), NOW)]
    assert mine == ["spiffe://example.org/mine"]


def test_disabled_or_expired_entries_are_not_served() -> None:
    entries = [
        _view("spiffe://example.org/off", ["unix:uid:1"], parent_id=AGENT, disabled=True),
        _view("spiffe://example.org/old", ["unix:uid:2"], parent_id=AGENT, expires_at=NOW),
    ]
    assert authorized_entries(entries, _agent(AGENT), NOW) == []


@pytest.mark.parametrize(
    "parent",
    [
        "spiffe://example.org/web",  # not an agent
        "spiffe://other.org/idmint/agent/join_token/a",  # another trust domain
        "not a spiffe id",
    ],
)
def test_parent_must_be_an_agent_of_this_trust_domain(database: Database, parent: str) -> None:
    spec = EntrySpec(
        spiffe_id="spiffe://example.org/w",
        selectors=["unix:uid:0"],
        owner="t",
        expires_at=datetime.now(UTC) + timedelta(days=1),
        parent_id=parent,
    )
    with pytest.raises(Exception) as raised:
        EntryStore(database, TD).create(spec, "test")
    assert isinstance(raised.value, InvalidEntry) or "SPIFFE ID" in str(raised.value)
    assert EntryStore(database, TD).list() == []
