"""Node agents: their identities, what they may serve, and bans.

An agent proves itself with node evidence (a join token minted with
``--agent``, or a Kubernetes, x509pop or OIDC attestation) and receives an
agent X509-SVID, ``spiffe://TD/idmint/agent/<type>/<who>``. Each agent gets a
registration entry of its own (created on first attestation, selector
``idmint_agent_svid:<agent ID>``, which no attestor produces), so its SVID is
issued, recorded and audited by the ordinary :class:`Issuer` path, and a ban
disables that entry: renewal by proof of possession stops with it.

The entries an agent may serve are those whose ``parent_id`` is its ID or
whose node selectors are all among its verified selectors;
:func:`authorized_entries` is the one place that decides it (swap in an
index there). The server signs for an agent only what that function returns.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from idmint.attestation.base import AttestationFailed, Attested
from idmint.attestation.join_token import new_token, token_hash
from idmint.ca.errors import AgentForbidden, AgentNotFound, CAError
from idmint.ca.issuance.entries import (
    AGENT_PATH,
    X509_TTL_RANGE,
    EntrySpec,
    EntryStore,
    EntryView,
    InvalidEntry,
    via_agent_selectors,
)
from idmint.ca.issuance.entry_index import EntryIndex
from idmint.ca.spiffe_id import SpiffeID, TrustDomain
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.ledgers import IssuedToken
from idmint.ca.storage.models import Agent, Entry, JoinToken
from idmint.errors import IdmintError

#: The selector of an agent's own entry; attestors never produce it.
AGENT_SVID_SELECTOR = "idmint_agent_svid"
AGENT_TTL_DEFAULT = timedelta(minutes=60)
AGENT_ENTRY_LIFETIME = timedelta(days=365)
AGENT_OWNER = "idmint-agent"
AGENT_TOKEN_TTL_RANGE = (timedelta(minutes=1), timedelta(days=7))
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class AgentView:
    """An agent as callers see it."""

    spiffe_id: str
    attestation_type: str
    selectors: tuple[str, ...]
    entry_id: str
    serial: str | None
    key_sha256: str | None
    svid_expires_at: datetime | None
    attested_at: datetime
    seen_at: datetime
    banned: bool
    banned_at: datetime | None

    @classmethod
    def of(cls, row: Agent) -> AgentView:
        return cls(
            spiffe_id=row.spiffe_id,
            attestation_type=row.attestation_type,
            selectors=tuple(row.selectors),
            entry_id=row.entry_id,
            serial=row.serial,
            key_sha256=row.key_sha256,
            svid_expires_at=row.svid_expires_at,
            attested_at=row.attested_at,
            seen_at=row.seen_at,
            banned=row.banned,
            banned_at=row.banned_at,
        )

    @property
    def node_selectors(self) -> tuple[str, ...]:
        return self.selectors

    def via(self) -> list[str]:
        """The selectors the agent API adds to this agent's requests."""
        return via_agent_selectors(self.spiffe_id, self.selectors)

    def to_json(self) -> dict[str, Any]:
        return {
            "spiffe_id": self.spiffe_id,
            "attestation_type": self.attestation_type,
            "selectors": list(self.selectors),
            "entry_id": self.entry_id,
            "serial": self.serial,
            "svid_expires_at": _iso(self.svid_expires_at),
            "attested_at": _iso(self.attested_at),
            "seen_at": _iso(self.seen_at),
            "banned": self.banned,
            "banned_at": _iso(self.banned_at),
        }


def key_digest(certificate: x509.Certificate) -> str:
    """SHA-256 (hex) of a certificate's SubjectPublicKeyInfo."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def is_agent_id(spiffe_id: str, trust_domain: TrustDomain) -> bool:
    try:
        parsed = SpiffeID.parse(spiffe_id)
    except IdmintError:
        return False
    return parsed.member_of(trust_domain) and parsed.path.startswith(AGENT_PATH)


def agent_id_for(trust_domain: TrustDomain, kind: str, attested: Attested) -> str:
    """The agent SPIFFE ID node evidence of type ``kind`` earns.

    A join token names its ID (``.../agent/join_token/<token id>``, minted by
    :meth:`AgentRegistry.create_token`); other evidence gets
    ``.../agent/<type>/<who>`` from the attestor's subject, so the same node
    attesting again gets the same ID.
    """
    if kind == "join_token":
        if attested.spiffe_id is None or not is_agent_id(attested.spiffe_id, trust_domain):
            raise AttestationFailed(
                "this join token is for a workload, not an agent; "
                "mint one with 'idmint token create --agent'"
            )
        return attested.spiffe_id
    who = attested.subject.split(":", 1)[-1]
    parts = [_UNSAFE.sub("_", part).strip("_") or "_" for part in who.split("/")]
    path = "/".join(parts)
    if len(path) > 200:  # keep IDs readable and well inside the 2048-byte limit
        path = path[:64] + "-" + hashlib.sha256(who.encode()).hexdigest()[:32]
    return str(SpiffeID.from_parts(trust_domain, f"{AGENT_PATH}{kind}/{path}"))


def authorized_entries(
    entries: EntryIndex | Iterable[EntryView], agent: AgentView, now: datetime
) -> list[EntryView]:
    """The usable entries this agent serves (the one place that decides it).

    From an :class:`EntryIndex`, only the agent's own buckets are read (its
    parented entries and those for its node selectors), so a sync costs the
    entries it serves, not all entries.
    """
    if isinstance(entries, EntryIndex):
        entries = entries.for_agent(agent.spiffe_id, agent.node_selectors)
    have = set(agent.via())
    return [e for e in entries if e.parented and e.usable(now) and e.reachable(have)]


def sync_document(
    agent: AgentView,
    entries: Sequence[EntryView],
    bundle_jwks: dict[str, Any],
    bundle_pem: str,
    x509_authority: str,
    untrusted_authorities: Sequence[str],
    revoked_jtis: Sequence[str] = (),
) -> tuple[str, dict[str, Any]]:
    """What an agent syncs, and its revision (a digest of it, the HTTP ETag)."""
    document = {
        "agent_id": agent.spiffe_id,
        "entries": [
            {
                "id": e.id,
                "spiffe_id": e.spiffe_id,
                "selectors": list(e.selectors),
                "x509_ttl_seconds": e.x509_ttl_seconds,
                "jwt_ttl_seconds": e.jwt_ttl_seconds,
                "audiences": list(e.audiences),
                "dns_names": list(e.dns_names),
                "updated_at": _iso(e.updated_at),
            }
            for e in sorted(entries, key=lambda e: e.id)
        ],
        "bundle": bundle_jwks,
        "bundle_pem": bundle_pem,
        "x509_authority": x509_authority,
        "untrusted_authorities": sorted(untrusted_authorities),
        "revoked_jtis": sorted(revoked_jtis),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    revision = hashlib.sha256(canonical).hexdigest()[:32]
    return revision, {**document, "revision": revision}


def agent_ttl(extra: dict[str, Any]) -> timedelta:
    """The agent SVID TTL from the config's ``[agent]`` section (1-60 min)."""
    section = extra.get("agent") or {}
    seconds = section.get("x509_ttl_seconds", int(AGENT_TTL_DEFAULT.total_seconds()))
    ttl = timedelta(seconds=int(seconds))
    low, high = X509_TTL_RANGE
    if not low <= ttl <= high:
        raise InvalidEntry(
            f"[agent] x509_ttl_seconds {seconds} is outside "
            f"{int(low.total_seconds())}-{int(high.total_seconds())}"
        )
    return ttl


class AgentRegistry:
    """Agent records, their own entries, agent join tokens and bans."""

    def __init__(self, database: Database, trust_domain: TrustDomain) -> None:
        self.database = database
        self.trust_domain = trust_domain
        self.entries = EntryStore(database, trust_domain)

    def create_token(self, ttl: timedelta, actor: str, now: datetime | None = None) -> IssuedToken:
        """A one-time node join token; attesting with it makes agent .../join_token/<id>."""
        now = now or datetime.now(UTC)
        low, high = AGENT_TOKEN_TTL_RANGE
        if not low <= ttl <= high:
            raise InvalidEntry(
                f"join token TTL {int(ttl.total_seconds())}s is outside "
                f"{int(low.total_seconds())}s-{int(high.total_seconds())}s"
            )
        token_id = str(uuid.uuid4())
        secret = new_token()
        spiffe_id = str(
            SpiffeID.from_parts(self.trust_domain, f"{AGENT_PATH}join_token/{token_id}")
        )
        row = JoinToken(
            id=token_id,
            token_hash=token_hash(secret),
            spiffe_id=spiffe_id,
            created_by=actor,
            created_at=now,
            expires_at=now + ttl,
            used_at=None,
            revoked=False,
        )
        with self.database.session() as session:
            session.add(row)
            audit.append(
                session,
                [
                    audit.Event(
                        "join-token.create",
                        spiffe_id,
                        actor,
                        detail={"id": token_id, "expires_at": row.expires_at, "agent": True},
                        at=now,
                    )
                ],
            )
        return IssuedToken(token_id, secret, spiffe_id, now + ttl)

    def enroll(
        self,
        agent_id: str,
        kind: str,
        selectors: Sequence[str],
        ttl: timedelta,
        actor: str,
        now: datetime | None = None,
    ) -> AgentView:
        """Record an attested agent (new or again) and make sure its entry exists."""
        now = now or datetime.now(UTC)
        with self.database.session() as session:
            row = session.get(Agent, agent_id, with_for_update=True)
            if row is not None and row.banned:
                raise AgentForbidden(f"agent {agent_id} is banned; it gets nothing more")
            entry_id = row.entry_id if row is not None else None
        entry_exists = False
        if entry_id is not None:
            with self.database.reading() as session:
                entry_exists = session.get(Entry, entry_id) is not None
        if not entry_exists:
            entry = self.entries.create(
                EntrySpec(
                    spiffe_id=agent_id,
                    selectors=[f"{AGENT_SVID_SELECTOR}:{agent_id}"],
                    owner=AGENT_OWNER,
                    expires_at=now + AGENT_ENTRY_LIFETIME,
                    x509_ttl=ttl,
                ),
                actor=actor,
                now=now,
            )
            entry_id = entry.id
        assert entry_id is not None
        with self.database.session() as session:
            row = session.get(Agent, agent_id, with_for_update=True)
            if row is None:
                row = Agent(
                    spiffe_id=agent_id,
                    attestation_type=kind,
                    selectors=sorted(set(selectors)),
                    entry_id=entry_id,
                    serial=None,
                    key_sha256=None,
                    svid_expires_at=None,
                    attested_at=now,
                    seen_at=now,
                    banned=False,
                    banned_at=None,
                )
                session.add(row)
            else:
                row.selectors = sorted(set(selectors))
                row.entry_id = entry_id
                row.attested_at = row.seen_at = now
            session.flush()
            audit.append(
                session,
                [
                    audit.Event(
                        "agent.attest",
                        agent_id,
                        actor,
                        detail={"type": kind, "selectors": sorted(set(selectors))},
                        at=now,
                    )
                ],
            )
            return AgentView.of(row)

    def issued(self, agent_id: str, serial: str, expires_at: datetime, key_sha256: str) -> None:
        """Note the agent's current SVID: shown by ``idmint agent show``, and its key
        lets that SVID renew once its issuer is tainted (see ca/api/agent.py)."""
        with self.database.session() as session:
            row = session.get(Agent, agent_id)
            if row is not None:
                row.serial, row.svid_expires_at = serial, expires_at
                row.key_sha256 = key_sha256
                row.seen_at = datetime.now(UTC)

    def get(self, agent_id: str) -> AgentView:
        with self.database.reading() as session:
            row = session.get(Agent, agent_id)
            if row is None:
                raise AgentNotFound(f"no agent {agent_id!r} has attested (idmint agent list)")
            return AgentView.of(row)

    def active(self, agent_id: str) -> AgentView:
        """The agent, if it may still be served; raise otherwise."""
        try:
            agent = self.get(agent_id)
        except AgentNotFound:
            raise AgentForbidden(f"{agent_id} is not an attested agent; attest first") from None
        if agent.banned:
            raise AgentForbidden(f"agent {agent_id} is banned; it gets nothing more")
        return agent

    def list(self) -> list[AgentView]:
        with self.database.reading() as session:
            rows = session.scalars(select(Agent).order_by(Agent.attested_at))
            return [AgentView.of(row) for row in rows]

    def ban(self, agent_id: str, actor: str, now: datetime | None = None) -> AgentView:
        """Ban an agent: nothing more for it or its workloads; its own entry is disabled."""
        now = now or datetime.now(UTC)
        with self.database.session() as session:
            row = session.get(Agent, agent_id, with_for_update=True)
            if row is None:
                raise AgentNotFound(f"no agent {agent_id!r} has attested (idmint agent list)")
            row.banned, row.banned_at = True, now
            entry_id = row.entry_id
            audit.append(session, [audit.Event("agent.ban", agent_id, actor, at=now)])
        try:
            self.entries.update(entry_id, {"disabled": True}, actor, now)
        except CAError:
            pass  # its entry was deleted by hand: the ban flag alone still refuses it
        return self.get(agent_id)


@dataclass(frozen=True)
class AgentAsAnomalySubject:
    """An agent as the anomaly response sees it: what it asks on its workloads' behalf.

    Counted in a baseline of its own (``agent:<its entry id>``): workload
    SVIDs per minute, its address, audiences, entries asked for that it does
    not serve. Its own SVID stays under its entry's baseline, so a throttled
    agent can still renew and attest. Step-up refuses its calls by proof until
    it attests afresh with node evidence; deny bans it and revokes its SVIDs.
    """

    agent: AgentView
    trust_domain: TrustDomain

    @property
    def id(self) -> str:
        from idmint.ca.anomaly.store import agent_key

        return agent_key(self.agent.entry_id)

    @property
    def spiffe_id(self) -> str:
        return self.agent.spiffe_id

    def deny(self, database: Database, actor: str, now: datetime) -> None:
        from idmint.ca.revocation.revocations import revoke_entry

        revoke_entry(database, self.agent.entry_id, actor, "unspecified", now=now, sweep_after=0)
        AgentRegistry(database, self.trust_domain).ban(self.agent.spiffe_id, actor, now)
