"""What the agent holds: entries, SVIDs (keys in memory only) and bundles.

One immutable :class:`Snapshot` at a time, replaced as a whole by the sync
loop; readers (the Workload API handlers) take the current one without a
lock and wait on :meth:`Store.wait` for the next. So a stream always sends
a consistent set: SVIDs and the bundle they chain to, from one moment.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class EntryInfo:
    """An entry the server says this agent serves."""

    id: str
    spiffe_id: str
    selectors: frozenset[str]
    x509_ttl_seconds: int
    jwt_ttl_seconds: int
    #: Changes whenever the server-side entry changes (its SVID is then re-made).
    stamp: str

    def matches(self, selectors: frozenset[str]) -> bool:
        return self.selectors <= selectors


@dataclass(frozen=True)
class Identity:
    """One X509-SVID ready to hand out."""

    entry_id: str
    spiffe_id: str
    #: Leaf first, then the intermediate: DER certificates.
    chain_der: tuple[bytes, ...]
    #: Unencrypted PKCS#8 DER, never written anywhere.
    key_pkcs8: bytes
    serial: str
    not_before: datetime
    not_after: datetime
    renew_at: datetime
    issuer_kid: str | None
    entry_stamp: str


@dataclass(frozen=True)
class Snapshot:
    """Everything the Workload API serves, as of one moment."""

    version: int = 0
    #: ``spiffe://example.org``
    trust_domain_id: str = ""
    entries: tuple[EntryInfo, ...] = ()
    identities: Mapping[str, Identity] = field(default_factory=dict)
    #: Concatenated DER root certificates (the X.509 bundle).
    bundle_der: bytes = b""
    #: JWKS (JSON bytes) of the JWT-SVID keys, each with its kid.
    jwt_bundle: bytes = b""
    jwt_keys: Mapping[str, Any] = field(default_factory=dict)
    revoked_jtis: frozenset[str] = frozenset()
    #: Whether the first sync and signing round finished.
    ready: bool = False

    def entries_for(self, selectors: Iterable[str]) -> list[EntryInfo]:
        have = frozenset(selectors)
        return sorted(
            (e for e in self.entries if e.matches(have)), key=lambda e: (e.spiffe_id, e.id)
        )

    def identities_for(self, selectors: Iterable[str]) -> list[Identity]:
        """The SVIDs a workload with these selectors gets, the default one first."""
        found = []
        for entry in self.entries_for(selectors):
            identity = self.identities.get(entry.id)
            if identity is not None:
                found.append(identity)
        return found


class Store:
    """The current snapshot and a way to wait for the next one."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._current = Snapshot()
        self.closed = False

    @property
    def current(self) -> Snapshot:
        return self._current

    def publish(self, **changes: Any) -> Snapshot:
        """Replace the snapshot with these fields changed, and wake every waiter."""
        with self._changed:
            self._current = dataclasses.replace(
                self._current, version=self._current.version + 1, **changes
            )
            self._changed.notify_all()
            return self._current

    def wait(self, version: int, timeout: float, ended: threading.Event | None = None) -> Snapshot:
        """The snapshot once it is newer than ``version`` (or ``ended`` is set, see
        :meth:`poke`), or the same after ``timeout``."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._current.version != version
                    or self.closed
                    or (ended is not None and ended.is_set())
                ),
                timeout=timeout,
            )
            return self._current

    def poke(self) -> None:
        """Wake every waiter so each checks its ``ended`` (a stream was cancelled)."""
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()
