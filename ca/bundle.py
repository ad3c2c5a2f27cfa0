"""The trust bundle: the roots a workload should trust (SPIFFE Trust Domain and Bundle)."""

from __future__ import annotations

from ca.authority import authorities
from ca.storage.db import Database
from ca.storage.models import Authority, AuthorityKind, AuthorityState

#: Roots in these states are published: a prepared root before anything chains
#: to it, a retired or tainted one until nothing under it can still validate.
PUBLISHED_STATES = frozenset(
    {
        AuthorityState.PREPARED,
        AuthorityState.ACTIVE,
        AuthorityState.RETIRED,
        AuthorityState.TAINTED,
    }
)


def published_roots(database: Database) -> list[Authority]:
    """Root authorities in the bundle, oldest first."""
    return [a for a in authorities(database, AuthorityKind.ROOT) if a.state in PUBLISHED_STATES]


def bundle_pem(database: Database) -> str:
    """The X.509 bundle as concatenated PEM certificates."""
    return "".join(a.certificate_pem or "" for a in published_roots(database))
