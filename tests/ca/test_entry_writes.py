"""Every entry write of the library reaches another worker's issuer within ``cache_seconds``.

The write goes through one ``Database``; the issuer that must see it works
on a second one on the same URL (another worker or replica, as far as it
can tell), has issued before the change (its entry index is warm), and is
asked again once ``cache_seconds`` have passed. The HTTP and CLI paths are
in tests/server/test_entry_changes.py; anomaly ``deny`` in test_anomaly.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from idmint.ca.errors import CAError
from idmint.ca.issuance.entries import EntrySpec, EntryStore
from idmint.ca.issuance.issuer import Issuer
from idmint.ca.revocation.revocations import revoke_entry
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database
from idmint.hsm import KeyStore

#: Long enough that a stale index would be caught, short enough to wait out.
CACHE = 0.3
LATER = datetime.now(UTC) + timedelta(days=30)


@pytest.fixture
def watcher(
    keystore: KeyStore, database_url: str, authorities: None, trust_domain: TrustDomain
) -> Iterator[Issuer]:
    """The other worker: its own Database on the same URL, a cache of ``CACHE`` seconds."""
    other = Database(database_url)
    issuer = Issuer(keystore, other, trust_domain, "https://idmint.test", cache_seconds=CACHE)
    yield issuer
    issuer.close()
    other.close()


def _spec(name: str, selectors: list[str]) -> EntrySpec:
    return EntrySpec(f"spiffe://example.org/{name}", selectors, "team", LATER, audiences=["x"])


def _issued(issuer: Issuer, selectors: list[str]) -> str:
    """The SPIFFE ID issued for ``selectors``, or the refusal's class name."""
    try:
        return issuer.issue_jwt(selectors, ["x"]).spiffe_id
    except CAError as refused:
        return type(refused).__name__


def _after_cache() -> None:
    time.sleep(CACHE + 0.05)  # every state cached before the change has expired


def test_create_update_disable_and_delete_reach_another_issuer(
    database: Database, trust_domain: TrustDomain, watcher: Issuer
) -> None:
    store = EntryStore(database, trust_domain)
    web = store.create(_spec("web", ["unix:uid:1"]), "t")
    assert _issued(watcher, ["unix:uid:1"]) == web.spiffe_id  # warm
    api = store.create(_spec("api", ["unix:uid:2"]), "t")
    _after_cache()
    assert _issued(watcher, ["unix:uid:2"]) == api.spiffe_id

    store.update(web.id, {"selectors": ["unix:uid:3"]}, "t")
    _after_cache()
    assert _issued(watcher, ["unix:uid:1"]) == "NoMatchingEntry"
    assert _issued(watcher, ["unix:uid:3"]) == web.spiffe_id

    store.update(web.id, {"disabled": True}, "t")
    _after_cache()
    assert _issued(watcher, ["unix:uid:3"]) == "NoMatchingEntry"

    store.update(web.id, {"disabled": False}, "t")
    _after_cache()
    assert _issued(watcher, ["unix:uid:3"]) == web.spiffe_id

    store.delete(api.id, "t")
    _after_cache()
    assert _issued(watcher, ["unix:uid:2"]) == "NoMatchingEntry"
    assert watcher.state().entries.get(api.id) is None


def test_revoking_an_entry_reaches_another_issuer(
    database: Database, trust_domain: TrustDomain, watcher: Issuer
) -> None:
    entry = EntryStore(database, trust_domain).create(_spec("web", ["unix:uid:1"]), "t")
    assert _issued(watcher, ["unix:uid:1"]) == entry.spiffe_id  # warm
    revoke_entry(database, entry.id, "t", sweep_after=0)
    _after_cache()
    assert _issued(watcher, ["unix:uid:1"]) == "NoMatchingEntry"


def test_an_update_may_not_make_an_entry_the_twin_of_another(
    database: Database, trust_domain: TrustDomain
) -> None:
    from idmint.ca.errors import DuplicateEntry

    store = EntryStore(database, trust_domain)
    first = store.create(_spec("twin", ["unix:uid:1"]), "t")
    second = store.create(_spec("twin", ["unix:uid:2"]), "t")
    with pytest.raises(DuplicateEntry, match=f"entry {first.id} already grants"):
        store.update(second.id, {"selectors": ["unix:uid:1"]}, "t")
    assert store.get(second.id).selectors == ("unix:uid:2",)
    # A change that leaves the identity alone is no twin of anything.
    assert store.update(first.id, {"owner": "other"}, "t").owner == "other"
