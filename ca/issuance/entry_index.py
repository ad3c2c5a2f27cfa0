"""An in-memory index of the registration entries, kept current from their change log.

Matching a workload looks up each of its verified selectors in a dictionary
instead of testing every entry: each entry is filed under one of its own
selectors (the rarest one when it was filed). An entry matches only when all
its selectors are among the workload's, so its filing selector is too, and
the buckets of the workload's selectors hold every entry that can match.
Filing under the rarest selector keeps those buckets small when thousands of
entries share a selector such as ``k8s:ns:prod``.

Every entry change raises the entry revision and logs the entry's id in the
same transaction (:func:`idmint.ca.issuance.entries.record_change`). A worker
polls that revision (one row) and re-reads only the entries changed since the
revision it holds, so a change made through any worker or replica reaches it
at its next poll, and no worker re-reads 100,000 rows to learn about one.
All reads go through :meth:`Database.reading`, beside the writer, never in
SQLite's cross-process write turn.

A full load reads only what matching needs (id, SPIFFE ID, selectors,
parent); the rest of an entry (policy, times) is read when the entry is first
matched, and kept. Measured at 100,000 entries: reading whole rows into
views took 6.5 s and 190 MB; the lean read takes a fraction of that.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from idmint.ca.issuance.entries import EntryView, match
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import Entry, EntryChange, EntryRevision

#: Entries read per statement (SQLite takes at most 32,766 parameters).
_CHUNK = 500


class _Slot:
    """What matching needs of one entry, and its view once read."""

    __slots__ = ("id", "node_selectors", "parent", "selectors", "spiffe_id", "view")

    def __init__(
        self,
        entry_id: str,
        spiffe_id: str,
        selectors: tuple[str, ...],
        parent: str | None,
        view: EntryView | None = None,
        node_selectors: tuple[str, ...] = (),
    ) -> None:
        self.id = entry_id
        self.spiffe_id = spiffe_id
        self.selectors = selectors
        self.parent = parent
        self.view = view
        self.node_selectors = node_selectors


def _drop(table: dict[str, list[_Slot]], key: str, slot: _Slot) -> None:
    bucket = table.get(key)
    if bucket is None:
        return
    bucket[:] = [s for s in bucket if s is not slot]
    if not bucket:
        del table[key]


def _unfile(table: dict[str, dict[str, _Slot]], key: str, entry_id: str) -> None:
    bucket = table.get(key)
    if bucket is not None:
        bucket.pop(entry_id, None)
        if not bucket:
            del table[key]


class EntryIndex:
    """Entries by id, by filing selector, by SPIFFE ID and by parent, at one revision.

    Readers and the one refresher of a process share an index: a lock held
    for each batch of changes makes a batch appear at once (an updated entry
    is never missing between its old and new place).
    """

    def __init__(self, database: Database, revision: int = 0) -> None:
        self.database = database
        self.revision = revision
        self._lock = threading.Lock()
        #: id -> (slot, the selector it is filed under)
        self._by_id: dict[str, tuple[_Slot, str]] = {}
        self._by_selector: dict[str, list[_Slot]] = {}
        self._by_spiffe_id: dict[str, list[_Slot]] = {}
        # An agent may serve thousands of entries: a dict per parent makes
        # each change O(1) where a tuple would be copied.
        self._by_parent: dict[str, dict[str, _Slot]] = {}
        # Entries for every agent with some node selectors (and no parent),
        # filed under the first of them: an agent looks in the buckets of its
        # own node selectors only.
        self._by_node_selector: dict[str, dict[str, _Slot]] = {}
        self._selector_counts: dict[str, int] = {}

    # -- reading -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[EntryView]:
        """Every entry (reads what is not read yet: O(n), not for the request path)."""
        with self._lock:
            slots = [slot for slot, _ in self._by_id.values()]
        return iter(self._views(slots))

    def get(self, entry_id: str) -> EntryView | None:
        found = self._by_id.get(entry_id)
        return None if found is None else next(iter(self._views([found[0]])), None)

    def candidates(self, selectors: Iterable[str]) -> list[EntryView]:
        """The entries whose selectors are all among ``selectors``."""
        have = set(selectors)
        found: list[_Slot] = []
        with self._lock:
            for selector in have:
                found.extend(self._by_selector.get(selector, ()))
        return self._views([slot for slot in found if have.issuperset(slot.selectors)])

    def for_spiffe_id(self, spiffe_id: str) -> list[EntryView]:
        """The entries that name this SPIFFE ID."""
        with self._lock:
            slots = list(self._by_spiffe_id.get(spiffe_id, ()))
        return self._views(slots)

    def for_parent(self, parent_id: str) -> list[EntryView]:
        """The entries whose parent is ``parent_id`` (an agent's SPIFFE ID)."""
        with self._lock:
            bucket = self._by_parent.get(parent_id)
            slots = [] if bucket is None else list(bucket.values())
        return self._views(slots)

    def for_agent(self, agent_id: str, node_selectors: Iterable[str]) -> list[EntryView]:
        """The entries an agent may serve: parented to it, or targeting its node selectors.

        Looks only in the agent's own buckets, so the cost grows with the
        entries it serves, not with all entries. (Usability and the full
        reachability rule are the caller's: :func:`authorized_entries`.)
        """
        have = set(node_selectors)
        with self._lock:
            slots = list(self._by_parent.get(agent_id, {}).values())
            for selector in have:
                bucket = self._by_node_selector.get(selector)
                if bucket:
                    slots.extend(s for s in bucket.values() if have.issuperset(s.node_selectors))
        return self._views(slots)

    def match(
        self,
        selectors: Sequence[str],
        now: datetime,
        spiffe_id: str | None = None,
        granted: str | None = None,
    ) -> EntryView:
        """:func:`idmint.ca.issuance.entries.match` over the entries that can match."""
        pool = self.for_spiffe_id(granted) if granted is not None else self.candidates(selectors)
        return match(pool, selectors, now, spiffe_id, granted)

    def _views(self, slots: Sequence[_Slot]) -> list[EntryView]:
        """The views of ``slots``, reading the ones not read yet in one query.

        A view read later than its slot may be newer (changed since): callers
        match on the view, so it is the newer policy that counts; an entry
        deleted meanwhile drops out.
        """
        missing = [slot for slot in slots if slot.view is None]
        if missing:
            with self.database.reading() as session:
                fresh = {view.id: view for view in read_views(session, [s.id for s in missing])}
            for slot in missing:
                slot.view = fresh.get(slot.id)  # None again if deleted meanwhile
        return [slot.view for slot in slots if slot.view is not None]

    # -- changing ------------------------------------------------------------

    def apply(self, revision: int, changed: Iterable[EntryView], gone: Iterable[str]) -> None:
        """Put ``changed`` entries in (replacing same ids), take ``gone`` ids out."""
        with self._lock:
            for view in changed:
                self._put(
                    _Slot(
                        view.id,
                        view.spiffe_id,
                        view.selectors,
                        view.parent_id,
                        view,
                        tuple(view.node_selectors),
                    )
                )
            for entry_id in gone:
                self._remove(entry_id)
            self.revision = revision

    def _file(self, selectors: tuple[str, ...]) -> str:
        counts = self._selector_counts
        best, fewest = selectors[0], counts.get(selectors[0], 0)
        for selector in selectors[1:]:
            seen = counts.get(selector, 0)
            if seen < fewest:
                best, fewest = selector, seen
        return best

    def _count(self, selectors: tuple[str, ...]) -> tuple[str, ...]:
        counts = self._selector_counts
        for selector in selectors:
            counts[selector] = counts.get(selector, 0) + 1
        return selectors

    def _put(self, slot: _Slot) -> None:
        self._remove(slot.id)
        self._index(slot, self._file(self._count(slot.selectors)))

    def _index(self, slot: _Slot, filed: str) -> None:
        self._by_id[slot.id] = (slot, filed)
        self._by_selector.setdefault(filed, []).append(slot)
        self._by_spiffe_id.setdefault(slot.spiffe_id, []).append(slot)
        if slot.parent is not None:
            self._by_parent.setdefault(slot.parent, {})[slot.id] = slot
        elif slot.node_selectors:
            self._by_node_selector.setdefault(slot.node_selectors[0], {})[slot.id] = slot

    def _remove(self, entry_id: str) -> None:
        found = self._by_id.pop(entry_id, None)
        if found is None:
            return
        slot, filed = found
        _drop(self._by_selector, filed, slot)
        _drop(self._by_spiffe_id, slot.spiffe_id, slot)
        counts = self._selector_counts
        for selector in slot.selectors:
            left = counts.get(selector, 1) - 1
            if left:
                counts[selector] = left
            else:
                counts.pop(selector, None)
        if slot.parent is not None:
            _unfile(self._by_parent, slot.parent, entry_id)
        elif slot.node_selectors:
            _unfile(self._by_node_selector, slot.node_selectors[0], entry_id)

    def _build(self, slots: Sequence[_Slot]) -> None:
        """File ``slots`` (a fresh index), each under its rarest selector among all."""
        for slot in slots:
            self._count(slot.selectors)
        for slot in slots:
            self._index(slot, self._file(slot.selectors))


# -- reading from the database ------------------------------------------------


def read_views(session: Session, entry_ids: Sequence[str]) -> list[EntryView]:
    """The entries with these ids (those that still exist), as views."""
    views: list[EntryView] = []
    for start in range(0, len(entry_ids), _CHUNK):
        rows = session.execute(
            select(Entry.__table__).where(Entry.id.in_(entry_ids[start : start + _CHUNK]))
        ).all()
        # Core rows, not ORM objects: no identity map or instance state per
        # row. A Row has the attributes EntryView.of reads.
        views.extend(EntryView.of(cast(Entry, row)) for row in rows)
    return views


def _revision(session: Session) -> int:
    found = session.scalar(select(EntryRevision.revision).where(EntryRevision.id == 1))
    return int(found or 0)


def load(database: Database) -> EntryIndex:
    """A new index of every entry, at the revision they were read at."""
    with database.reading() as session:
        # The revision first: a change committed while the rows are read has
        # a later revision, so the next refresh reads it (again, harmlessly).
        revision = _revision(session)
        # The driver's tuples as they are: SQLAlchemy's per-row conversion
        # cost more than the rest of the load.
        rows = (
            session.connection()
            .exec_driver_sql(
                "SELECT id, spiffe_id, selectors, parent_id, node_selectors FROM entries"
            )
            .fetchall()
        )
    intern = sys.intern  # a selector many entries share is kept once
    decode = json.loads

    def strings(value: Any) -> tuple[str, ...]:
        # JSON is text on SQLite, decoded already by PostgreSQL's driver.
        if not value:
            return ()
        return tuple(intern(s) for s in (decode(value) if isinstance(value, str) else value))

    slots = [
        _Slot(row[0], row[1], strings(row[2]), row[3], node_selectors=strings(row[4]))
        for row in rows
    ]
    index = EntryIndex(database, revision)
    index._build(slots)
    return index


def refresh(index: EntryIndex | None, database: Database) -> EntryIndex:
    """``index`` brought up to the database's revision (in place), or a fresh load.

    One single-row read when nothing changed. A full load when there is no
    index yet, or the change log no longer reaches back to its revision
    (pruned, or the database was restored from a backup).
    """
    if index is None:
        return load(database)
    with database.reading() as session:
        revision = _revision(session)
        if revision == index.revision:
            return index
        changes = session.execute(
            select(EntryChange.revision, EntryChange.entry_id)
            .where(EntryChange.revision > index.revision)
            .order_by(EntryChange.revision)
        ).all()
        if revision < index.revision or not changes or changes[0][0] != index.revision + 1:
            reload = True
        else:
            reload = False
            revision = changes[-1][0]
            ids = list(dict.fromkeys(entry_id for _, entry_id in changes))
            changed = read_views(session, ids)
    if reload:
        return load(database)
    present = {view.id for view in changed}
    index.apply(revision, changed, [entry_id for entry_id in ids if entry_id not in present])
    return index
