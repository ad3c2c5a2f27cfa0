"""The library-level issuance API the server calls.

Given selectors an attestor has verified and a CSR (or audiences), pick the
registration entry, issue the SVID with the active authority's HSM key,
record it and audit it (committed with the spend of the request's
single-use evidence, before the SVID is signed). Refusals are audited too,
aggregated per source and minute.

Active authorities, entries and the bundle are read from the database and
kept for ``cache_seconds`` (default 1 s): every replica sees a change within
that time, and the hot path does no query. One HSM signature per credential.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from idmint.ca.anomaly.errors import AnomalyDenied, AnomalyThrottled, StepUpRequired
from idmint.ca.anomaly.monitor import AnomalyCheck, NoCheck, Request
from idmint.ca.authority.authorities import active, jwt_algorithm, signing_key
from idmint.ca.errors import AudienceNotAllowed
from idmint.ca.issuance.entries import AmbiguousEntry, EntryView, NoMatchingEntry
from idmint.ca.issuance.entry_index import EntryIndex, refresh
from idmint.ca.jose.bundle import Bundle, load_bundle
from idmint.ca.jose.jwtsvid import encode_jwt_svid, jwt_svid_claims
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import Authority, AuthorityKind, CredentialKind, Revocation
from idmint.ca.storage.recorder import Issuance, Recorder, RecordSink
from idmint.ca.storage.refusals import RefusalLog
from idmint.ca.storage.spends import Spend
from idmint.ca.x509.csr import CheckedCSR, check_csr, check_requested_names
from idmint.ca.x509.profiles import random_serial, signature_hash
from idmint.ca.x509.x509svid import leaf_certificate, svid_window
from idmint.errors import IdmintError
from idmint.hsm import KeyStore
from idmint.hsm.keys import AnyHSMKey

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)

T = TypeVar("T")
#: Reads kept by Issuer.cached at most (distinct keys; then it starts afresh).
_MAX_CACHED_READS = 10_000


@dataclass(frozen=True)
class X509SVID:
    """An issued X509-SVID: leaf + intermediate chain, and the bundle to trust."""

    spiffe_id: str
    chain_pem: str
    bundle_pem: str
    serial: str
    expires_at: datetime
    certificate: x509.Certificate


@dataclass(frozen=True)
class X509Request:
    """One CSR of a batch (:meth:`Issuer.issue_x509_batch`) and what it is for."""

    selectors: Sequence[str]
    csr: bytes
    spiffe_id: str | None = None
    checked: CheckedCSR | None = None


@dataclass(frozen=True)
class _X509Draft:
    """An X509-SVID decided but not signed yet: its record, audit event and signer."""

    spiffe_id: str
    serial: str
    not_after: datetime
    chain_tail: str
    bundle_pem: str
    credential: dict[str, Any]
    event: audit.Event
    sign: Callable[[], x509.Certificate]

    def svid(self, certificate: x509.Certificate) -> X509SVID:
        leaf_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return X509SVID(
            spiffe_id=self.spiffe_id,
            chain_pem=leaf_pem + self.chain_tail,
            bundle_pem=self.bundle_pem,
            serial=self.serial,
            expires_at=self.not_after,
            certificate=certificate,
        )


@dataclass(frozen=True)
class JWTSVID:
    """An issued JWT-SVID."""

    spiffe_id: str
    token: str
    jti: str
    audiences: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True)
class _SigningCA:
    row: Authority
    certificate: x509.Certificate
    pem: str
    key: AnyHSMKey
    hash: Any


@dataclass(frozen=True)
class _SigningJWT:
    row: Authority
    key: AnyHSMKey
    alg: str
    sign: Callable[[bytes], bytes]


@dataclass(frozen=True)
class _State:
    loaded_at: float
    ca: _SigningCA
    jwt: _SigningJWT
    entries: EntryIndex
    bundle: Bundle
    bundle_pem: str


class Issuer:
    """Issues SVIDs for one trust domain."""

    def __init__(
        self,
        keystore: KeyStore,
        database: Database,
        trust_domain: TrustDomain,
        issuer_url: str,
        recorder: RecordSink | None = None,
        cache_seconds: float = 1.0,
        clock: Clock | None = None,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
        anomaly: AnomalyCheck | None = None,
    ) -> None:
        self.keystore = keystore
        self.database = database
        self.trust_domain = trust_domain
        self.issuer_url = issuer_url
        self.recorder: RecordSink = recorder or Recorder(database)
        self._owns_recorder = recorder is None
        self.refusals = RefusalLog(self.recorder)
        self.cache_seconds = cache_seconds
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.crl_url = crl_url
        self.ocsp_url = ocsp_url
        self.anomaly: AnomalyCheck = anomaly or NoCheck()
        self._lock = threading.Lock()
        self._state: _State | None = None
        # Kept when the rest of the state is dropped (invalidate): entries
        # are refreshed from their change log, never re-read whole.
        self._index: EntryIndex | None = None
        #: key -> (monotonic time read, value): see :meth:`cached`.
        self._reads: dict[Hashable, tuple[float, object]] = {}

    def close(self) -> None:
        self.refusals.close()
        if self._owns_recorder:
            self.recorder.close()

    # -- cached state --------------------------------------------------------

    def _load(self) -> _State:
        ca_row = active(self.database, AuthorityKind.INTERMEDIATE)
        jwt_row = active(self.database, AuthorityKind.JWT)
        previous = self._state
        if previous is not None and previous.ca.row.id == ca_row.id:
            ca = previous.ca
        else:
            assert ca_row.certificate_pem is not None
            certificate = x509.load_pem_x509_certificate(ca_row.certificate_pem.encode("ascii"))
            key = signing_key(self.keystore, ca_row)
            ca = _SigningCA(
                ca_row, certificate, ca_row.certificate_pem, key, signature_hash(key.public_key())
            )
        if previous is not None and previous.jwt.row.id == jwt_row.id:
            jwt = previous.jwt
        else:
            key = signing_key(self.keystore, jwt_row)
            alg = jwt_algorithm(jwt_row)
            jwt = _SigningJWT(jwt_row, key, alg, lambda data: key.sign_jws(alg, data))
        bundle = load_bundle(self.database, self.trust_domain.name)
        return _State(
            loaded_at=time.monotonic(),
            ca=ca,
            jwt=jwt,
            entries=self._refreshed_entries(),
            bundle=bundle,
            bundle_pem=bundle.pem(),
        )

    def _refreshed_entries(self) -> EntryIndex:
        """The entry index at the database's revision (call with ``_lock`` held)."""
        self._index = refresh(self._index, self.database)
        return self._index

    def state(self) -> _State:
        """Authorities, entries and bundle, re-read at most every ``cache_seconds``.

        Entries come from an index refreshed with the changes since its
        revision: one single-row read when nothing changed.
        """
        state = self._state
        if state is None or time.monotonic() - state.loaded_at >= self.cache_seconds:
            with self._lock:
                state = self._state
                if state is None or time.monotonic() - state.loaded_at >= self.cache_seconds:
                    state = self._state = self._load()
        return state

    def _match(
        self,
        state: _State,
        selectors: Sequence[str],
        now: datetime,
        spiffe_id: str | None,
        granted: str | None,
    ) -> tuple[_State, EntryView]:
        """Match in the entry index; on a miss, bring the index up to date once.

        An entry created a moment ago through another worker or replica is
        then found at once, while the hot path still reads nothing.
        """
        try:
            return state, state.entries.match(selectors, now, spiffe_id, granted)
        except (NoMatchingEntry, AmbiguousEntry):
            pass  # refusals are rare and rate-limited: worth one read to be sure
        with self._lock:
            entries = self._refreshed_entries()
            current = self._state or state
            if current.entries is not entries:  # reloaded whole (the change log was cut)
                current = self._state = replace(current, entries=entries)
        return current, entries.match(selectors, now, spiffe_id, granted)

    def invalidate(self) -> None:
        """Forget cached state (after a change made in this process)."""
        with self._lock:
            self._state = None
            self._reads.clear()

    def bundle(self) -> Bundle:
        return self.state().bundle

    def cached(self, key: Hashable, load: Callable[[], T]) -> T:
        """``load()``, reused for ``cache_seconds`` like the rest of the state.

        For the reads every proof of possession makes (authority states, the
        revocation of the SVID, an agent's record): an agent syncing every
        second paid four queries a time for answers that change rarely. A
        change reaches every worker and replica within ``cache_seconds``, as
        entries and authorities do; :meth:`invalidate` forgets them at once.
        """
        now = time.monotonic()
        found = self._reads.get(key)
        if found is not None and now - found[0] < self.cache_seconds:
            return cast(T, found[1])
        value = load()
        if len(self._reads) >= _MAX_CACHED_READS:
            self._reads.clear()  # bounded: many distinct keys mean an attack or a sweep
        self._reads[key] = (now, value)
        return value

    def authority_state(self, kid: str | None) -> str | None:
        """The state of the authority with this key id (SKI hex), None if unknown."""
        if kid is None:
            return None

        def load() -> str | None:
            with self.database.reading() as session:
                found = session.scalar(select(Authority.state).where(Authority.kid == kid))
            return None if found is None else str(found.value)

        return self.cached(("authority", kid), load)

    def is_revoked(self, serial_hex: str) -> bool:
        """Whether the X509-SVID with this serial was revoked."""

        def load() -> bool:
            with self.database.reading() as session:
                found = session.scalar(
                    select(Revocation.id)
                    .where(Revocation.kind == CredentialKind.X509)
                    .where(Revocation.identifier == serial_hex)
                )
            return found is not None

        return self.cached(("revoked", serial_hex), load)

    # -- issuance ------------------------------------------------------------

    def refuse(self, action: str, actor: str, error: IdmintError, selectors: Iterable[str]) -> None:
        """Audit a refused request, aggregated per source and minute (see :mod:`refusals`)."""
        self.refusals.refused(action, actor, error, selectors)

    def _refused_for(self, entry: EntryView, now: datetime, error: IdmintError) -> None:
        """Count a refusal against the entry it was for (the anomaly refusals signal).

        The anomaly response's own refusals are not counted again: the check
        counted those requests already. Counting must not replace the
        refusal the caller gets with a database error, so such an error is
        logged instead.
        """
        if isinstance(error, AnomalyThrottled | StepUpRequired | AnomalyDenied):
            return
        try:
            self.anomaly.refused(entry, now)
        except (IdmintError, SQLAlchemyError):
            log.exception("anomaly: a refusal for %s was not counted", entry.spiffe_id)

    def _signed(
        self,
        spend: Spend | None,
        credential: dict[str, Any],
        event: audit.Event,
        sign: Callable[[], Any],
        action: str,
        detail: dict[str, Any],
    ) -> Any:
        """Spend, record and audit in one transaction; sign meanwhile; return once committed.

        The record is sent before signing starts and the signature is
        returned only after the commit was confirmed, so nothing leaves
        unrecorded; the HSM signature and the commit overlap instead of
        adding up. If the commit is refused (evidence replayed, database
        away) the signature is thrown away unseen.
        """
        settle = self.recorder.begin(Issuance(spend, credential, (event,)))
        try:
            signed = sign()
        except Exception:
            try:
                settle()
            except IdmintError:
                raise  # not recorded: nothing to mark
            self._unsigned(action, event.subject, event.actor, detail)
            raise
        settle()
        return signed

    def _unsigned(self, action: str, subject: str, actor: str, detail: dict[str, Any]) -> None:
        """Mark a recorded credential whose signing failed (nobody holds it; harmless)."""
        try:
            self.recorder.commit(
                Issuance(
                    None,
                    None,
                    (audit.Event(action, subject, actor, "failed", detail, self.clock()),),
                )
            )
        except IdmintError:
            log.exception("could not audit an unsigned credential %s", detail)

    def issue_x509(
        self,
        selectors: Sequence[str],
        csr: bytes,
        spiffe_id: str | None = None,
        actor: str = "workload",
        granted: str | None = None,
        checked: CheckedCSR | None = None,
        spend: Spend | None = None,
        by_proof: bool = False,
        attested_at: Callable[[], datetime | None] | None = None,
    ) -> X509SVID:
        """An X509-SVID for the entry the selectors match, from the workload's CSR.

        ``spend`` (the request's single-use evidence) is spent in the
        transaction that records the SVID, committed before it is signed.
        ``by_proof``: the caller proved possession of an earlier SVID rather
        than attesting (a renewal, as the anomaly response sees it), and
        ``attested_at`` says when it last attested afresh (see
        :class:`~idmint.ca.anomaly.monitor.Request`).
        """
        draft = self._draft_x509(
            selectors, csr, spiffe_id, actor, granted, checked, by_proof, attested_at
        )
        certificate = self._signed(
            spend,
            draft.credential,
            draft.event,
            draft.sign,
            "x509-svid.sign",
            {"serial": draft.serial},
        )
        return draft.svid(certificate)

    def issue_x509_batch(
        self,
        requests: Sequence[X509Request],
        actor: str,
        spend: Spend | None = None,
    ) -> list[X509SVID]:
        """One X509-SVID per request, all recorded in one transaction (with ``spend``).

        Every request is checked and matched first: one refused refuses the
        batch and nothing is recorded. The records go to the database in one
        commit while the certificates are signed (one HSM signature each);
        none is returned before that commit.
        """
        drafts = [
            self._draft_x509(r.selectors, r.csr, r.spiffe_id, actor, None, r.checked)
            for r in requests
        ]
        items = [
            Issuance(spend if n == 0 else None, d.credential, (d.event,))
            for n, d in enumerate(drafts)
        ]
        settle = self.recorder.begin_many(items)
        signed: list[x509.Certificate] = []
        try:
            for draft in drafts:
                signed.append(draft.sign())
        except Exception:
            try:
                settle()
            except IdmintError:
                raise  # not recorded: nothing to mark
            for draft in drafts[len(signed) :]:
                self._unsigned(
                    "x509-svid.sign", draft.event.subject, actor, {"serial": draft.serial}
                )
            raise
        settle()
        return [draft.svid(certificate) for draft, certificate in zip(drafts, signed, strict=True)]

    def _draft_x509(
        self,
        selectors: Sequence[str],
        csr: bytes,
        spiffe_id: str | None,
        actor: str,
        granted: str | None,
        checked: CheckedCSR | None,
        by_proof: bool = False,
        attested_at: Callable[[], datetime | None] | None = None,
    ) -> _X509Draft:
        """Everything of an X509-SVID but its signature: entry, window, serial, record."""
        try:
            checked = checked or check_csr(csr)
            state = self.state()
            now = self.clock()
            state, entry = self._match(state, selectors, now, spiffe_id, granted)
            check_requested_names(checked, entry.spiffe_id, entry.dns_names)
            self.anomaly.check(
                entry,
                Request("x509", now, tuple(selectors), by_proof=by_proof, attested_at=attested_at),
            )
            ca = state.ca
            not_before, not_after = svid_window(
                now, timedelta(seconds=entry.x509_ttl_seconds), ca.certificate.not_valid_after_utc
            )
            serial = random_serial()
            builder = leaf_certificate(
                checked.public_key,
                entry.spiffe_id,
                entry.dns_names,
                ca.certificate,
                not_before,
                not_after,
                serial,
                crl_url=self.crl_url,
                ocsp_url=self.ocsp_url,
            )
        except IdmintError as error:
            self.refuse("x509-svid.issue", actor, error, selectors)
            raise
        serial_hex = format(serial, "x")
        return _X509Draft(
            spiffe_id=entry.spiffe_id,
            serial=serial_hex,
            not_after=not_after,
            chain_tail=ca.pem,
            bundle_pem=state.bundle_pem,
            credential={
                "kind": CredentialKind.X509,
                "identifier": serial_hex,
                "spiffe_id": entry.spiffe_id,
                "entry_id": entry.id,
                "authority_id": ca.row.id,
                "issued_at": now,
                "not_after": not_after,
            },
            event=audit.Event(
                "x509-svid.issue",
                entry.spiffe_id,
                actor,
                detail={"serial": serial_hex, "entry": entry.id, "not_after": not_after},
                at=now,
            ),
            sign=lambda: builder.sign(ca.key, ca.hash),
        )

    def issue_jwt(
        self,
        selectors: Sequence[str],
        audiences: Sequence[str],
        spiffe_id: str | None = None,
        actor: str = "workload",
        granted: str | None = None,
        spend: Spend | None = None,
    ) -> JWTSVID:
        """A JWT-SVID for the matched entry, for ``audiences`` the entry allows.

        Recorded with ``spend`` before it is signed, as :meth:`issue_x509`.
        """
        matched: EntryView | None = None
        try:
            state = self.state()
            now = self.clock()
            state, entry = self._match(state, selectors, now, spiffe_id, granted)
            matched = entry
            if entry.audiences:
                refused = [a for a in audiences if a not in entry.audiences]
                if refused:
                    raise AudienceNotAllowed(
                        f"the entry for {entry.spiffe_id} does not allow audience(s) {refused}; "
                        f"allowed: {list(entry.audiences)}"
                    )
            self.anomaly.check(entry, Request("jwt", now, tuple(selectors), tuple(audiences)))
            jwt = state.jwt
            claims = jwt_svid_claims(
                entry.spiffe_id,
                audiences,
                self.issuer_url,
                now,
                timedelta(seconds=entry.jwt_ttl_seconds),
                not_after_cap=jwt.row.not_after,
            )
        except IdmintError as error:
            self.refuse("jwt-svid.issue", actor, error, selectors)
            if matched is not None:
                self._refused_for(matched, now, error)
            raise
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
        token = self._signed(
            spend,
            {
                "kind": CredentialKind.JWT,
                "identifier": claims["jti"],
                "spiffe_id": entry.spiffe_id,
                "entry_id": entry.id,
                "authority_id": jwt.row.id,
                "issued_at": now,
                "not_after": expires_at,
            },
            audit.Event(
                "jwt-svid.issue",
                entry.spiffe_id,
                actor,
                detail={"jti": claims["jti"], "aud": list(audiences), "entry": entry.id},
                at=now,
            ),
            lambda: encode_jwt_svid(jwt.sign, jwt.alg, jwt.row.kid, claims),
            "jwt-svid.sign",
            {"jti": claims["jti"]},
        )
        return JWTSVID(
            spiffe_id=entry.spiffe_id,
            token=token,
            jti=claims["jti"],
            audiences=tuple(audiences),
            expires_at=expires_at,
        )
