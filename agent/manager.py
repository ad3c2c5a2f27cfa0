"""The sync loop: attest, follow the server, keep every SVID fresh.

Every ``sync_interval`` seconds the agent asks for its entries with the last
revision (a 304 costs the server one digest and no write); SVIDs are signed
in one batch for every entry that has none, whose entry changed, whose
issuer was tainted, or that reached its renewal time (about half its life,
with jitter so that many agents do not renew in step). While the server is
unreachable the agent keeps serving what it holds until it expires, logs
that once, and retries with exponential back-off; SVIDs that expire are
dropped. The agent's own SVID is renewed the same way, by proof of
possession; when the server refuses that (banned, or its issuer tainted) it
attests again if its evidence can be used again (a join token cannot).
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from idmint.agent.errors import AgentError, ServerRefused
from idmint.agent.server_client import AgentSVID, ServerClient
from idmint.agent.state import EntryInfo, Identity, Store
from idmint.ca.issuance.pop import issuer_kid
from idmint.ca.jose.jwtsvid import jwks_keys
from idmint.client import new_key_and_csr
from idmint.errors import IdmintError

log = logging.getLogger("idmint.agent")

#: Returns node evidence for /v1/agent/attest, or None when there is none left;
#: given the server client (x509pop asks the server for a nonce to sign).
Evidence = Callable[[ServerClient], dict[str, Any] | None]
MAX_BACKOFF = 30.0
#: CSRs per signing request (the server takes 256, and 64 KiB bodies: ~100 CSRs).
BATCH = 100
JITTER = 0.05


#: The problem type of the anomaly response's step-up (ca/anomaly/errors.py).
STEP_UP = "step-up-required"


def renew_time(not_before: datetime, not_after: datetime, rng: random.Random) -> datetime:
    """About half-way through the validity window, give or take 5 % of it."""
    return not_before + (not_after - not_before) * (0.5 + rng.uniform(-JITTER, JITTER))


def _trust_domain_id(spiffe_id: str) -> str:
    return "spiffe://" + spiffe_id.removeprefix("spiffe://").split("/", 1)[0]


class Manager:
    """Owns the server conversation and publishes snapshots to the :class:`Store`."""

    def __init__(
        self,
        client: ServerClient,
        evidence: Evidence,
        store: Store,
        sync_interval: float = 1.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.client = client
        self.evidence = evidence
        self.store = store
        self.sync_interval = sync_interval
        self.clock = clock or (lambda: datetime.now(UTC))
        self.rng = random.Random()
        self.revision: str | None = None
        self.untrusted: frozenset[str] = frozenset()
        self.last_success: datetime | None = None
        self.down = False
        self._agent_renew_at: datetime | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._jwt_lock = threading.Lock()
        #: A JWT-SVID request by proof was refused (401): renew or attest next round.
        self._proof_refused = threading.Event()
        self._refusal: ServerRefused | None = None
        self._jwts: dict[tuple[str, tuple[str, ...]], tuple[str, datetime, str | None]] = {}

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="idmint-agent-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _loop(self) -> None:
        backoff = self.sync_interval
        while not self._stop.is_set():
            try:
                self.step()
            except IdmintError as error:  # server down or refusing, bad data from it
                if not self.down:
                    # Once per outage: the agent keeps serving what it holds.
                    log.warning("server unavailable, serving cached SVIDs: %s", error)
                    self.down = True
                backoff = min(max(backoff * 2, self.sync_interval), MAX_BACKOFF)
                self._drop_expired()
                self._sleep(backoff * self.rng.uniform(0.8, 1.2))
                continue
            if self.down:
                log.warning("server reachable again")
                self.down = False
            backoff = self.sync_interval
            self._sleep(self.sync_interval)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    # -- one round -------------------------------------------------------------

    def step(self) -> None:
        """Attest or renew the agent SVID if due, sync, sign what is due, publish."""
        if self._proof_refused.is_set():
            self._proof_refused.clear()
            self._answer_refusal(self._refusal)
        self._ensure_agent_svid()
        try:
            document = self.client.sync(self.revision)
        except ServerRefused as refused:
            if refused.status != 401:
                raise
            # The agent SVID stopped proving anything (its issuer tainted, say):
            # renew it by proof of the key the server last issued it, then retry.
            self._renew_agent()
            document = self.client.sync(self.revision)
        if document is not None:
            self._apply(document)
        try:
            self._sign_due()
        except ServerRefused as refused:
            if refused.status != 401:
                raise
            self._answer_refusal(refused)
            self._sign_due()
        self.last_success = self.clock()
        if not self.store.current.ready:
            self.store.publish(ready=True)

    def _ensure_agent_svid(self) -> None:
        svid = self.client.svid
        now = self.clock()
        if svid is None:
            self._attest()
            return
        if self._agent_renew_at is not None and now < self._agent_renew_at:
            if issuer_kid(svid.certificate) not in self.untrusted:
                return
        self._renew_agent()

    def _answer_refusal(self, refused: ServerRefused | None) -> None:
        """The server wants more than this agent SVID's proof: give it.

        A step-up by the anomaly response is satisfied only by attesting
        afresh with node evidence; other refusals of a proof (its issuer
        tainted, say) by renewing the SVID, or attesting if that is refused.
        """
        if refused is not None and refused.problem == STEP_UP:
            log.warning("the server asks this agent to attest afresh (%s)", refused)
            self._attest()
        else:
            log.warning("a call by proof was refused (%s); renewing the agent SVID", refused)
            self._renew_agent()

    def _renew_agent(self) -> None:
        try:
            self._installed(self.client.renew())
        except ServerRefused as refused:
            if refused.status not in (401, 403):
                raise
            log.warning("agent SVID renewal refused (%s); attesting again", refused)
            self._attest()

    def _attest(self) -> None:
        evidence = self.evidence(self.client)
        if evidence is None:
            raise AgentError(
                "the agent needs to attest but has no usable node evidence left "
                "(a join token is good once): restart it with new evidence"
            )
        self._installed(self.client.attest(evidence))
        log.info("attested as %s", self.client.svid.spiffe_id if self.client.svid else "?")

    def _installed(self, svid: AgentSVID) -> None:
        certificate = svid.certificate
        self._agent_renew_at = renew_time(
            certificate.not_valid_before_utc, certificate.not_valid_after_utc, self.rng
        )
        if not self.store.current.trust_domain_id:
            self.store.publish(trust_domain_id=_trust_domain_id(svid.spiffe_id))

    def _apply(self, document: dict[str, Any]) -> None:
        entries = tuple(
            EntryInfo(
                id=str(e["id"]),
                spiffe_id=str(e["spiffe_id"]),
                selectors=frozenset(e["selectors"]),
                x509_ttl_seconds=int(e["x509_ttl_seconds"]),
                jwt_ttl_seconds=int(e["jwt_ttl_seconds"]),
                stamp=str(e["updated_at"]),
            )
            for e in document["entries"]
        )
        roots = x509.load_pem_x509_certificates(str(document["bundle_pem"]).encode("ascii"))
        bundle_der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in roots)
        jwks = document["bundle"]
        jwt_only = {"keys": [k for k in jwks.get("keys", []) if k.get("use") == "jwt-svid"]}
        self.untrusted = frozenset(document.get("untrusted_authorities", ()))
        known = {e.id for e in entries}
        current = self.store.current
        identities = {k: v for k, v in current.identities.items() if k in known}
        self.store.publish(
            trust_domain_id=current.trust_domain_id or _trust_domain_id(document["agent_id"]),
            entries=entries,
            identities=identities,
            bundle_der=bundle_der,
            jwt_bundle=json.dumps(jwt_only).encode(),
            jwt_keys=jwks_keys(jwt_only),
            revoked_jtis=frozenset(document.get("revoked_jtis", ())),
        )
        with self._jwt_lock:
            self._jwts = {k: v for k, v in self._jwts.items() if k[0] in known}
        self.revision = str(document["revision"])

    def _due(self, entry: EntryInfo, now: datetime) -> bool:
        held = self.store.current.identities.get(entry.id)
        return (
            held is None
            or held.entry_stamp != entry.stamp
            or held.renew_at <= now
            or held.issuer_kid in self.untrusted
        )

    def _sign_due(self) -> None:
        now = self.clock()
        due = [e for e in self.store.current.entries if self._due(e, now)]
        if not due:
            self._drop_expired()
            return
        keys = {}
        requests = []
        for entry in due:
            key, csr = new_key_and_csr()
            keys[entry.id] = key
            requests.append((entry.id, csr))
        issued = []
        for start in range(0, len(requests), BATCH):
            issued.extend(self.client.sign_x509(requests[start : start + BATCH]))
        by_entry = {e.id: e for e in due}
        identities = dict(self.store.current.identities)
        for svid in issued:
            entry = by_entry[svid["entry_id"]]
            chain = x509.load_pem_x509_certificates(str(svid["chain_pem"]).encode("ascii"))
            leaf = chain[0]
            identities[entry.id] = Identity(
                entry_id=entry.id,
                spiffe_id=str(svid["spiffe_id"]),
                chain_der=tuple(c.public_bytes(serialization.Encoding.DER) for c in chain),
                key_pkcs8=keys[entry.id].private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                serial=str(svid["serial"]),
                not_before=leaf.not_valid_before_utc,
                not_after=leaf.not_valid_after_utc,
                renew_at=renew_time(leaf.not_valid_before_utc, leaf.not_valid_after_utc, self.rng),
                issuer_kid=issuer_kid(leaf),
                entry_stamp=entry.stamp,
            )
        self.store.publish(identities=self._unexpired(identities, now))

    @staticmethod
    def _unexpired(identities: dict[str, Identity], now: datetime) -> dict[str, Identity]:
        return {k: v for k, v in identities.items() if v.not_after > now}

    def _drop_expired(self) -> None:
        current = self.store.current.identities
        kept = self._unexpired(dict(current), self.clock())
        if len(kept) != len(current):
            self.store.publish(identities=kept)

    # -- JWT-SVIDs ---------------------------------------------------------------

    def jwt_svid(self, entry: EntryInfo, audiences: tuple[str, ...]) -> str:
        """A JWT-SVID for ``entry`` and ``audiences``, reused until about half its life."""
        key = (entry.id, tuple(sorted(set(audiences))))
        now = self.clock()
        with self._jwt_lock:
            cached = self._jwts.get(key)
        if cached is not None:
            token, reuse_until, jti = cached
            if reuse_until > now and jti not in self.store.current.revoked_jtis:
                return token
        try:
            issued = self.client.jwt(entry.id, list(key[1]))
        except ServerRefused as refused:
            if refused.status == 401:  # see step(): the sync thread renews or attests
                self._refusal = refused
                self._proof_refused.set()
                self._wake.set()
            raise
        token = str(issued["token"])
        expires = datetime.fromisoformat(str(issued["expires_at"]).replace("Z", "+00:00"))
        issued_at = _jwt_iat(token) or now
        reuse_until = issued_at + (expires - issued_at) / 2
        with self._jwt_lock:
            self._jwts[key] = (token, reuse_until, issued.get("jti"))
        return token


def _jwt_iat(token: str) -> datetime | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return datetime.fromtimestamp(int(claims["iat"]), UTC)
    except (IndexError, ValueError, KeyError, TypeError):
        return None
