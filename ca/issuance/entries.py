"""Registration entries: which selectors earn which SPIFFE ID, under what policy.

An entry matches a workload when every one of the entry's selectors is among
the workload's verified selectors. Owner and expiry are required on every
entry, so no identity is anonymous or eternal. Disabled and expired entries
issue nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from idmint.attestation.join_token import JoinTokenAttestor
from idmint.attestation.k8s_psat import KubernetesPSATAttestor
from idmint.attestation.oidc import OIDCAttestor
from idmint.attestation.systemd import SystemdAttestor
from idmint.attestation.unix import UnixAttestor
from idmint.attestation.x509pop import X509PoPAttestor
from idmint.ca.errors import (
    AmbiguousEntry,
    DuplicateEntry,
    EntryNotFound,
    InvalidEntry,
    NoMatchingEntry,
)
from idmint.ca.spiffe_id import SpiffeID, TrustDomain
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import Entry, EntryChange, EntryRevision

X509_TTL_DEFAULT = timedelta(minutes=10)
X509_TTL_RANGE = (timedelta(minutes=1), timedelta(minutes=60))
JWT_TTL_DEFAULT = timedelta(minutes=5)
JWT_TTL_RANGE = (timedelta(minutes=1), timedelta(minutes=15))
#: Change-log rows kept for entry indexes that are behind; one further back reloads.
CHANGES_KEPT = 10_000

# type:value, where the value may itself contain colons (oidc:github:ref:refs/heads/main).
_SELECTOR = re.compile(r"^[a-z][a-z0-9_]*:[^\s]+$")
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

#: Agent SPIFFE IDs live under this path (spiffe://TD/idmint/agent/...).
AGENT_PATH = "/idmint/agent/"
#: Selector types only the agent API adds to a request, never an attestor:
#: "this request comes through agent X" and "agent X has node selector S".
#: A parented entry matches only when they say it is X's to serve, and a
#: request carrying them matches parented entries only.
VIA_AGENT = "idmint_via_agent"
VIA_NODE = "idmint_via_node"


#: Selector types each server-side attestor produces, by attestation type.
SERVER_SELECTOR_TYPES = {
    cls.type: cls.selector_types
    for cls in (JoinTokenAttestor, OIDCAttestor, KubernetesPSATAttestor, X509PoPAttestor)
}
#: Selector types an agent's workload attestors produce (always both on).
WORKLOAD_SELECTOR_TYPES = (UnixAttestor.type, SystemdAttestor.type)


def via_agent_selectors(agent_id: str, node_selectors: Iterable[str]) -> list[str]:
    """The selectors the agent API adds to a request made through agent ``agent_id``."""
    return [f"{VIA_AGENT}:{agent_id}", *(f"{VIA_NODE}:{s}" for s in node_selectors)]


@dataclass(frozen=True)
class EntrySpec:
    """The fields an admin sets on an entry (validated by :func:`validate`)."""

    spiffe_id: str
    selectors: Sequence[str]
    owner: str
    expires_at: datetime
    x509_ttl: timedelta = X509_TTL_DEFAULT
    jwt_ttl: timedelta = JWT_TTL_DEFAULT
    audiences: Sequence[str] = field(default_factory=tuple)
    dns_names: Sequence[str] = field(default_factory=tuple)
    admin: bool = False
    disabled: bool = False
    #: The agent SPIFFE ID that serves this entry; None: issued directly.
    parent_id: str | None = None
    #: Or/and: every agent whose node selectors include all of these.
    node_selectors: Sequence[str] = field(default_factory=tuple)


def _check_ttl(name: str, ttl: timedelta, bounds: tuple[timedelta, timedelta]) -> None:
    low, high = bounds
    if not low <= ttl <= high:
        raise InvalidEntry(
            f"{name} {int(ttl.total_seconds())}s is outside {int(low.total_seconds())}-"
            f"{int(high.total_seconds())}s"
        )


def normalise_selectors(selectors: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated selectors; raise naming a malformed one."""
    result = set()
    for selector in selectors:
        if not isinstance(selector, str) or not _SELECTOR.match(selector):
            raise InvalidEntry(
                f"selector {selector!r} is not 'type:value' (e.g. unix:uid:1000, k8s:ns:prod)"
            )
        result.add(selector)
    if not result:
        raise InvalidEntry("an entry needs at least one selector")
    return sorted(result)


def selector_warnings(spec: EntrySpec, attestors: Iterable[str]) -> list[str]:
    """Why some of ``spec``'s selectors can never match, given the ``attestors`` served.

    Not an error: an operator may create entries before configuring the
    attestor that will serve them. An entry served through agents is matched
    on the agent's workload selectors; one without a parent on the
    selectors of the server's own attestors.
    """
    enabled = sorted(attestors)
    parented = spec.parent_id is not None or bool(spec.node_selectors)
    produced = (
        set(WORKLOAD_SELECTOR_TYPES)
        if parented
        else {t for a in enabled for t in SERVER_SELECTOR_TYPES.get(a, ())}
    )
    unknown = sorted({s.split(":", 1)[0] for s in spec.selectors} - produced)
    warnings = []
    for kind in unknown:
        if parented:
            warnings.append(
                f"selector type {kind!r}: an agent's workload attestors produce only "
                f"{', '.join(WORKLOAD_SELECTOR_TYPES)} selectors, so this entry served "
                "through agents can never match"
            )
        elif kind in WORKLOAD_SELECTOR_TYPES:
            warnings.append(
                f"selector type {kind!r} comes from an agent's workload attestors, and this "
                f"entry has no --parent-id or --node-selector; the server's attestors "
                f"({', '.join(enabled)}) never produce it"
            )
        else:
            warnings.append(
                f"selector type {kind!r} is produced by no attestor configured on this server "
                f"(configured: {', '.join(enabled)}; [attestation] in idmint.toml)"
            )
    return warnings


def check_dns_name(name: str) -> str:
    """A lowercase DNS name of letter-digit-hyphen labels (no wildcards)."""
    if not isinstance(name, str) or len(name) > 253 or not name:
        raise InvalidEntry(f"DNS name {name!r} is empty or longer than 253 characters")
    labels = name.split(".")
    if not all(_DNS_LABEL.match(label) for label in labels):
        raise InvalidEntry(
            f"DNS name {name!r} is not valid: lowercase letters, digits and '-' in dot-separated "
            "labels (wildcards are not issued)"
        )
    return name


def validate(spec: EntrySpec, trust_domain: TrustDomain, now: datetime) -> EntrySpec:
    """Check every field; return the spec with selectors normalised."""
    spiffe_id = SpiffeID.parse(spec.spiffe_id)
    if not spiffe_id.member_of(trust_domain):
        raise InvalidEntry(
            f"SPIFFE ID {spec.spiffe_id} is not in this trust domain ({trust_domain.name})"
        )
    if not spiffe_id.path:
        raise InvalidEntry("a workload SPIFFE ID needs a path (spiffe://TD/...)")
    if not spec.owner or not spec.owner.strip():
        raise InvalidEntry("an entry needs an owner (a team, person or service responsible)")
    if spec.expires_at.tzinfo is None:
        raise InvalidEntry("expires_at needs a time zone (use UTC, e.g. 2027-01-01T00:00:00Z)")
    if spec.expires_at <= now:
        raise InvalidEntry(f"expires_at {spec.expires_at.isoformat()} is not in the future")
    _check_ttl("x509 TTL", spec.x509_ttl, X509_TTL_RANGE)
    _check_ttl("JWT TTL", spec.jwt_ttl, JWT_TTL_RANGE)
    for audience in spec.audiences:
        if not isinstance(audience, str) or not audience.strip():
            raise InvalidEntry(f"audience {audience!r} is empty")
    dns_names = [check_dns_name(name) for name in spec.dns_names]
    parent_id = None
    if spec.parent_id is not None:
        parent = SpiffeID.parse(spec.parent_id)
        if not parent.member_of(trust_domain) or not parent.path.startswith(AGENT_PATH):
            raise InvalidEntry(
                f"parent ID {spec.parent_id} is not an agent of this trust domain "
                f"(spiffe://{trust_domain.name}{AGENT_PATH}...; see idmint agent list)"
            )
        parent_id = str(parent)
    node_selectors = normalise_selectors(spec.node_selectors) if spec.node_selectors else []
    return EntrySpec(
        spiffe_id=str(spiffe_id),
        selectors=normalise_selectors(spec.selectors),
        owner=spec.owner.strip(),
        expires_at=spec.expires_at.astimezone(UTC),
        x509_ttl=spec.x509_ttl,
        jwt_ttl=spec.jwt_ttl,
        audiences=list(dict.fromkeys(spec.audiences)),
        dns_names=list(dict.fromkeys(dns_names)),
        admin=spec.admin,
        disabled=spec.disabled,
        parent_id=parent_id,
        node_selectors=node_selectors,
    )


@dataclass(frozen=True)
class EntryView:
    """An entry as callers see it (never the ORM object)."""

    id: str
    spiffe_id: str
    selectors: tuple[str, ...]
    owner: str
    expires_at: datetime
    x509_ttl_seconds: int
    jwt_ttl_seconds: int
    audiences: tuple[str, ...]
    dns_names: tuple[str, ...]
    admin: bool
    disabled: bool
    created_at: datetime
    updated_at: datetime
    parent_id: str | None = None
    node_selectors: tuple[str, ...] = ()

    @classmethod
    def of(cls, row: Entry) -> EntryView:
        return cls(
            id=row.id,
            spiffe_id=row.spiffe_id,
            selectors=tuple(row.selectors),
            owner=row.owner,
            expires_at=row.expires_at,
            x509_ttl_seconds=row.x509_ttl_seconds,
            jwt_ttl_seconds=row.jwt_ttl_seconds,
            audiences=tuple(row.audiences),
            dns_names=tuple(row.dns_names),
            admin=row.admin,
            disabled=row.disabled,
            created_at=row.created_at,
            updated_at=row.updated_at,
            parent_id=row.parent_id,
            node_selectors=tuple(row.node_selectors or ()),
        )

    def usable(self, now: datetime) -> bool:
        return not self.disabled and self.expires_at > now

    @property
    def parented(self) -> bool:
        """Served through agents only (it has a parent or node selectors)."""
        return self.parent_id is not None or bool(self.node_selectors)

    def reachable(self, have: set[str]) -> bool:
        """Whether a request with selectors ``have`` may get this entry at all.

        Parented entries only through their agent (``have`` carries the
        :data:`VIA_AGENT` selectors the agent API adds), and a request made
        through an agent only gets parented entries.
        """
        if not self.parented:
            return not any(s.startswith(VIA_AGENT + ":") for s in have)
        if self.parent_id is not None and f"{VIA_AGENT}:{self.parent_id}" not in have:
            return False
        return all(f"{VIA_NODE}:{s}" in have for s in self.node_selectors)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spiffe_id": self.spiffe_id,
            "selectors": list(self.selectors),
            "owner": self.owner,
            "expires_at": _iso(self.expires_at),
            "x509_ttl_seconds": self.x509_ttl_seconds,
            "jwt_ttl_seconds": self.jwt_ttl_seconds,
            "audiences": list(self.audiences),
            "dns_names": list(self.dns_names),
            "admin": self.admin,
            "disabled": self.disabled,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "parent_id": self.parent_id,
            "node_selectors": list(self.node_selectors),
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fields(spec: EntrySpec) -> dict[str, Any]:
    return {
        "spiffe_id": spec.spiffe_id,
        "selectors": list(spec.selectors),
        "owner": spec.owner,
        "expires_at": spec.expires_at,
        "x509_ttl_seconds": int(spec.x509_ttl.total_seconds()),
        "jwt_ttl_seconds": int(spec.jwt_ttl.total_seconds()),
        "audiences": list(spec.audiences),
        "dns_names": list(spec.dns_names),
        "admin": spec.admin,
        "disabled": spec.disabled,
        "parent_id": spec.parent_id,
        "node_selectors": list(spec.node_selectors),
    }


#: The fields that make two entries the same grant; an entry identical in
#: them to another would only shadow it (match() picks one of the two).
_IDENTITY = {"spiffe_id", "selectors", "parent_id", "node_selectors"}


def _refuse_duplicate(session: Session, spec: EntrySpec, exclude: str | None = None) -> None:
    """Raise DuplicateEntry naming an existing entry identical to ``spec`` (validated)."""
    query = select(Entry).where(Entry.spiffe_id == spec.spiffe_id)
    if exclude is not None:
        query = query.where(Entry.id != exclude)
    selectors, node_selectors = set(spec.selectors), set(spec.node_selectors)
    for row in session.scalars(query.order_by(Entry.created_at, Entry.id)):
        if (
            row.parent_id == spec.parent_id
            and set(row.selectors) == selectors
            and set(row.node_selectors or ()) == node_selectors
        ):
            parent = f", parent {spec.parent_id}" if spec.parent_id else ""
            nodes = f", node selectors {sorted(node_selectors)}" if node_selectors else ""
            raise DuplicateEntry(
                f"entry {row.id} already grants {spec.spiffe_id} for the selectors "
                f"{sorted(selectors)}{parent}{nodes}; change that one "
                f"(idmint entry update {row.id}) instead of adding a twin"
            )


class EntryStore:
    """CRUD on entries; every change is audited in the same transaction."""

    def __init__(self, database: Database, trust_domain: TrustDomain) -> None:
        self.database = database
        self.trust_domain = trust_domain

    def create(self, spec: EntrySpec, actor: str, now: datetime | None = None) -> EntryView:
        now = now or datetime.now(UTC)
        checked = validate(spec, self.trust_domain, now)
        row = Entry(id=str(uuid.uuid4()), created_at=now, updated_at=now, **_fields(checked))
        with self.database.session() as session:
            # The revision row's lock first: two identical creates at once
            # are serialised, so the second finds the first (on every replica).
            record_change(session, [row.id], now)
            _refuse_duplicate(session, checked)
            session.add(row)
            session.flush()
            view = EntryView.of(row)
            audit.append(
                session,
                [audit.Event("entry.create", view.spiffe_id, actor, detail=view.to_json(), at=now)],
            )
        return view

    def update(
        self, entry_id: str, changes: dict[str, Any], actor: str, now: datetime | None = None
    ) -> EntryView:
        """Apply ``changes`` (EntrySpec field names) to an entry, validated as a whole."""
        now = now or datetime.now(UTC)
        unknown = set(changes) - set(EntrySpec.__dataclass_fields__)
        if unknown:
            raise InvalidEntry(f"unknown entry fields: {sorted(unknown)}")
        with self.database.session() as session:
            row = self._get(session, entry_id, lock=True)
            current = EntrySpec(
                spiffe_id=row.spiffe_id,
                selectors=row.selectors,
                owner=row.owner,
                expires_at=row.expires_at,
                x509_ttl=timedelta(seconds=row.x509_ttl_seconds),
                jwt_ttl=timedelta(seconds=row.jwt_ttl_seconds),
                audiences=row.audiences,
                dns_names=row.dns_names,
                admin=row.admin,
                disabled=row.disabled,
                parent_id=row.parent_id,
                node_selectors=row.node_selectors or [],
            )
            merged = EntrySpec(**{**current.__dict__, **changes})
            checked = validate(merged, self.trust_domain, now)
            # Only when the identity changes: an update of two twins made
            # before duplicates were refused (a TTL, disabling one) still works.
            if _IDENTITY & set(changes):
                _refuse_duplicate(session, checked, exclude=entry_id)
            for name, value in _fields(checked).items():
                setattr(row, name, value)
            row.updated_at = now
            session.flush()
            view = EntryView.of(row)
            record_change(session, [view.id], now)
            audit.append(
                session,
                [
                    audit.Event(
                        "entry.update",
                        view.spiffe_id,
                        actor,
                        detail={"id": entry_id, "changes": sorted(changes)},
                        at=now,
                    )
                ],
            )
        return view

    def delete(self, entry_id: str, actor: str, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        with self.database.session() as session:
            row = self._get(session, entry_id, lock=True)
            spiffe_id = row.spiffe_id
            session.delete(row)
            record_change(session, [entry_id], now)
            audit.append(
                session,
                [audit.Event("entry.delete", spiffe_id, actor, detail={"id": entry_id}, at=now)],
            )

    def get(self, entry_id: str) -> EntryView:
        with self.database.session() as session:
            return EntryView.of(self._get(session, entry_id))

    def list(self) -> list[EntryView]:
        with self.database.session() as session:
            rows = session.scalars(select(Entry).order_by(Entry.spiffe_id, Entry.id))
            return [EntryView.of(row) for row in rows]

    @staticmethod
    def _get(session: Session, entry_id: str, lock: bool = False) -> Entry:
        query = select(Entry).where(Entry.id == entry_id)
        if lock:
            query = query.with_for_update()
        row = session.scalars(query).one_or_none()
        if row is None:
            raise EntryNotFound(f"no registration entry with id {entry_id!r}")
        return row


def record_change(session: Session, entry_ids: Sequence[str], now: datetime) -> int:
    """Raise the entry revision for each changed entry, in the caller's transaction.

    Every write to the entries table must call this (created, updated,
    disabled or deleted rows alike): it is how each server worker and
    replica learns what to re-read (see :mod:`idmint.ca.issuance.entry_index`).
    The UPDATE takes the revision row's lock until commit, so revisions
    commit in order. Returns the newest revision.
    """
    revision = session.execute(
        update(EntryRevision)
        .where(EntryRevision.id == 1)
        .values(revision=EntryRevision.revision + len(entry_ids))
        .returning(EntryRevision.revision)
    ).scalar_one()
    first = revision - len(entry_ids) + 1
    if entry_ids:
        session.execute(
            insert(EntryChange),
            [
                {"revision": first + n, "entry_id": entry_id, "changed_at": now}
                for n, entry_id in enumerate(entry_ids)
            ],
        )
    if revision // 1000 != (first - 1) // 1000:  # prune now and then, not on every write
        session.execute(delete(EntryChange).where(EntryChange.revision <= revision - CHANGES_KEPT))
    return int(revision)


def match(
    entries: Iterable[EntryView],
    selectors: Iterable[str],
    now: datetime,
    spiffe_id: str | None = None,
    granted: str | None = None,
) -> EntryView:
    """The entry for a workload with these verified ``selectors``.

    Every selector of the entry must be among the workload's. When entries
    for several SPIFFE IDs match, the caller must name one; among entries for
    the same ID the most specific (most selectors) wins.
    """
    have = set(selectors)
    if granted is not None:
        # The SPIFFE ID is already proven (a join token minted for it, or a
        # current SVID for it): the entry only supplies policy.
        candidates = [
            e for e in entries if e.usable(now) and e.spiffe_id == granted and e.reachable(have)
        ]
        if not candidates:
            raise NoMatchingEntry(f"no enabled, unexpired registration entry for {granted}")
        return max(candidates, key=lambda e: (len(e.selectors), e.id))
    candidates = [
        e for e in entries if e.usable(now) and have.issuperset(e.selectors) and e.reachable(have)
    ]
    if spiffe_id is not None:
        candidates = [e for e in candidates if e.spiffe_id == spiffe_id]
    if not candidates:
        wanted = f" for {spiffe_id}" if spiffe_id else ""
        raise NoMatchingEntry(
            f"no enabled, unexpired registration entry{wanted} matches the selectors {sorted(have)}"
        )
    ids = sorted({e.spiffe_id for e in candidates})
    if len(ids) > 1:
        raise AmbiguousEntry(
            f"entries for several SPIFFE IDs match ({', '.join(ids)}); ask for one with spiffe_id"
        )
    return max(candidates, key=lambda e: (len(e.selectors), e.id))
