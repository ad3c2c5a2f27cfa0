"""``/v1/agent``: the node agent's API, and the admin routes for agents.

An agent attests with node evidence and gets an agent X509-SVID; every
other call carries ``X-Idmint-Agent-Proof``, a proof of possession of that
SVID (see :mod:`idmint.ca.issuance.pop`) over this request's method, path
and body, so the body cannot be swapped. Proofs of calls that issue are
spent (single use); a sync (a read) is not, so it writes nothing.

- ``POST /v1/agent/attest``  node evidence + CSR -> agent SVID
- ``POST /v1/agent/renew``   new CSR, by proof -> agent SVID (refused when banned)
- ``GET  /v1/agent/entries`` what it serves, bundle, authority state; ETag /
  ``If-None-Match`` -> 304 with no body when nothing changed
- ``POST /v1/agent/x509``    many CSRs for its entries -> one SVID each; one
  entry that is not its own -> 403 and nothing issued
- ``POST /v1/agent/jwt``     a JWT-SVID for one of its entries
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography import x509
from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from idmint.attestation.base import AttestationFailed
from idmint.ca.anomaly.monitor import Request as AnomalyRequest
from idmint.ca.api import metrics
from idmint.ca.api.auth import Unauthenticated, request_payload, require_admin
from idmint.ca.api.context import APIState, state
from idmint.ca.api.limits import limit_address, limit_identity
from idmint.ca.api.svid import BadRequest, body, check_issuers
from idmint.ca.issuance.agents import (
    AGENT_SVID_SELECTOR,
    AgentAsAnomalySubject,
    AgentForbidden,
    AgentRegistry,
    AgentView,
    agent_id_for,
    agent_ttl,
    authorized_entries,
    is_agent_id,
    key_digest,
    sync_document,
)
from idmint.ca.issuance.issuer import X509SVID, X509Request
from idmint.ca.issuance.pop import verify_proof
from idmint.ca.storage import spends
from idmint.ca.storage.models import Authority, AuthorityState, CredentialKind, Revocation
from idmint.ca.x509.csr import CheckedCSR, check_csr
from idmint.errors import IdmintError

blueprint = Blueprint("agent", __name__)
log = logging.getLogger(__name__)

PROOF_HEADER = "X-Idmint-Agent-Proof"
PROOF_PURPOSE = "agent"
MAX_BATCH = 256
T = TypeVar("T")


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string")
    return value


def _audiences(data: dict[str, Any]) -> list[str]:
    value = data.get("audience")
    audiences = [value] if isinstance(value, str) else value
    if not isinstance(audiences, list) or not audiences:
        raise BadRequest("'audience' must be a non-empty string or list of strings")
    if not all(isinstance(a, str) and a for a in audiences):
        raise BadRequest("'audience' must be a non-empty string or list of strings")
    return list(audiences)


def _x509_json(svid: X509SVID) -> dict[str, Any]:
    return {
        "spiffe_id": svid.spiffe_id,
        "chain_pem": svid.chain_pem,
        "bundle_pem": svid.bundle_pem,
        "serial": svid.serial,
        "expires_at": svid.expires_at.isoformat().replace("+00:00", "Z"),
    }


def _registry(api: APIState) -> AgentRegistry:
    return AgentRegistry(api.service.database, api.service.trust_domain)


def authenticate(spend: bool, renewing: bool = False) -> AgentView:
    """The calling agent, from its SVID proof; raise 401/403 otherwise.

    An SVID under a tainted authority proves nothing (its key may be in
    other hands, who could mint any ID), except to renew the very SVID this
    server last issued to the agent: ``renewing`` and the same public key as
    recorded. A forger holding the tainted CA key but not the agent's own key
    cannot sign that proof; so the agent moves off the tainted key without
    new node evidence (a join token is good once). Removed authorities never.
    """
    header = request.headers.get(PROOF_HEADER)
    if not header:
        raise Unauthenticated(f"agent calls need an agent SVID proof ({PROOF_HEADER})")
    try:
        proof = json.loads(base64.b64decode(header, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise Unauthenticated(f"{PROOF_HEADER} is not base64-encoded JSON") from None
    api = state()
    issuer = api.service.issuer
    now = datetime.now(UTC)
    proven = verify_proof(
        proof, PROOF_PURPOSE, request_payload(), issuer.bundle().roots, now, issuer.is_revoked
    )
    if not is_agent_id(proven.spiffe_id, api.service.trust_domain):
        raise AgentForbidden(f"{proven.spiffe_id} is not an agent SVID")
    registry = _registry(api)
    if renewing:  # the recorded key decides under a taint: read it fresh
        agent = registry.active(proven.spiffe_id)
    else:
        agent = issuer.cached(
            ("agent", proven.spiffe_id), lambda: registry.active(proven.spiffe_id)
        )
    try:
        check_issuers(issuer, proven)
    except AttestationFailed:
        if not renewing or not _own_svid_under_taint(issuer, proven, proof, agent):
            raise
    if spend:
        pending = spends.current()
        if pending is not None:  # spent with the first credential's record
            pending.keys.append(proven.replay_key)
        else:
            api.used.spend([proven.replay_key], now)
    return agent


def _own_svid_under_taint(issuer: Any, proven: Any, proof: Any, agent: AgentView) -> bool:
    states = {issuer.authority_state(proven.issuer_kid), issuer.authority_state(proven.root_kid)}
    if not states <= {"active", "retired", "tainted"} or agent.key_sha256 is None:
        return False
    leaf = x509.load_pem_x509_certificates(str(proof["chain"]).encode("ascii"))[0]
    return hmac.compare_digest(key_digest(leaf), agent.key_sha256)


def _checked_csr(api: APIState, text: str) -> CheckedCSR:
    try:
        return check_csr(text.encode("ascii", "replace"))
    except IdmintError as error:
        api.service.issuer.refuse("x509-svid.issue", request.remote_addr or "-", error, ())
        raise


def _agent_svid(
    api: APIState,
    agent: AgentView,
    csr: str,
    checked: CheckedCSR,
    spend: spends.Spend | None = None,
    by_proof: bool = False,
) -> Any:
    svid = metrics.timed(
        "x509-agent",
        lambda: api.service.issuer.issue_x509(
            [f"{AGENT_SVID_SELECTOR}:{agent.spiffe_id}"],
            csr.encode("ascii", "replace"),
            agent.spiffe_id,
            actor=f"agent:{agent.spiffe_id}",
            checked=checked,
            spend=spend,
            by_proof=by_proof,
            attested_at=_attested_at(api, agent) if by_proof else None,
        ),
    )
    _registry(api).issued(
        agent.spiffe_id, svid.serial, svid.expires_at, key_digest(svid.certificate)
    )
    return jsonify({**_x509_json(svid), "agent_id": agent.spiffe_id}), 201


@blueprint.post("/v1/agent/attest")
def attest() -> Any:
    """Node evidence + CSR -> agent X509-SVID."""
    data = body()
    limit_address()
    csr = _text(data, "csr")
    api = state()
    # The CSR first: a malformed one must not burn single-use evidence.
    checked = _checked_csr(api, csr)
    evidence = data.get("attestation")
    # The evidence is spent in the transaction that records the agent SVID.
    with spends.collecting(datetime.now(UTC)) as spend:
        attested = api.attest(evidence, spend.now)
        kind = str(evidence["type"]) if isinstance(evidence, dict) else "-"
        agent_id = agent_id_for(api.service.trust_domain, kind, attested)
        limit_identity(agent_id)
        agent = _registry(api).enroll(
            agent_id,
            kind,
            attested.selectors,
            agent_ttl(api.service.config.extra),
            attested.subject,
        )
        return _agent_svid(api, agent, csr, checked, spend)


@blueprint.post("/v1/agent/renew")
def renew() -> Any:
    """A new agent SVID by proof of the current one."""
    data = body()
    limit_address()
    csr = _text(data, "csr")
    api = state()
    checked = _checked_csr(api, csr)  # before the proof is spent
    with spends.collecting(datetime.now(UTC)) as spend:
        agent = authenticate(spend=True, renewing=True)
        return _agent_svid(api, agent, csr, checked, spend, by_proof=True)


def _revoked_jtis(api: APIState) -> list[str]:
    """JWT-SVIDs revoked and not yet expired: the agent's ValidateJWTSVID refuses them."""
    with api.service.database.reading() as session:
        return list(
            session.scalars(
                select(Revocation.identifier)
                .where(Revocation.kind == CredentialKind.JWT)
                .where(Revocation.not_after > datetime.now(UTC))
            )
        )


def _untrusted_authorities(api: APIState) -> list[str]:
    with api.service.database.reading() as session:
        return list(
            session.scalars(
                select(Authority.kid).where(
                    Authority.state.in_([AuthorityState.TAINTED, AuthorityState.REMOVED])
                )
            )
        )


@dataclass(frozen=True)
class _Synced:
    """The last sync document built for one agent, and what it was built from."""

    inputs: tuple[Any, ...]
    #: The document is stale from then on even if nothing changed: an entry expires.
    valid_until: datetime
    etag: str
    body: bytes


class _SyncCache:
    """What every agent's sync needs, and each agent's last document, per process.

    Agents poll every second or so and nearly always find nothing changed;
    rebuilding and hashing a document of 1,000 entries for that cost ~ms.
    So the document is rebuilt only when one of its inputs changed: the
    entry index revision, the authorities and bundle, the agent's own
    selectors, the revoked jtis and untrusted authorities (read at most once
    per ``cache_seconds`` for all agents), or an entry in it expired.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_agent: dict[str, _Synced] = {}

    @staticmethod
    def shared(api: APIState) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(untrusted authorities, revoked jtis), at most ``cache_seconds`` old."""
        return api.service.issuer.cached(
            ("agent-sync",),
            lambda: (
                tuple(sorted(_untrusted_authorities(api))),
                tuple(sorted(_revoked_jtis(api))),
            ),
        )

    def document(self, api: APIState, agent: AgentView) -> _Synced:
        current = api.service.issuer.state()
        untrusted, revoked = self.shared(api)
        inputs = (
            current.entries.revision,
            current.ca.row.kid,
            current.jwt.row.kid,
            current.bundle_pem,
            agent.selectors,
            untrusted,
            revoked,
        )
        now = datetime.now(UTC)
        with self._lock:
            found = self._by_agent.get(agent.spiffe_id)
        if found is not None and found.inputs == inputs and now < found.valid_until:
            return found
        mine = authorized_entries(current.entries, agent, now)
        revision, document = sync_document(
            agent,
            mine,
            current.bundle.jwks(),
            current.bundle_pem,
            current.ca.row.kid,
            untrusted,
            revoked,
        )
        valid_until = min((e.expires_at for e in mine), default=now + timedelta(days=365))
        made = _Synced(inputs, valid_until, f'"{revision}"', json.dumps(document).encode())
        with self._lock:
            self._by_agent[agent.spiffe_id] = made
        return made


def _syncs() -> _SyncCache:
    found = current_app.extensions.get("idmint.agent_syncs")
    if found is None:
        found = current_app.extensions.setdefault("idmint.agent_syncs", _SyncCache())
    assert isinstance(found, _SyncCache)
    return found


@blueprint.get("/v1/agent/entries")
def entries() -> Any:
    """The entries this agent serves, the bundle and authority state, with a revision."""
    limit_address()
    agent = authenticate(spend=False)
    synced = _syncs().document(state(), agent)
    if request.headers.get("If-None-Match") == synced.etag:
        response = Response(status=304)
    else:
        response = Response(synced.body, status=200, mimetype="application/json")
    response.headers["ETag"] = synced.etag
    return response


def _attested_at(api: APIState, agent: AgentView) -> Callable[[], datetime | None]:
    """When the agent last attested, read fresh (the cached view may predate it)."""
    return lambda: _registry(api).get(agent.spiffe_id).attested_at


def _check_agent(
    api: APIState, agent: AgentView, kind: str, count: int, audiences: tuple[str, ...] = ()
) -> None:
    """Count the agent's request in its own baseline; raise if the response refuses it.

    What an agent asks for its workloads is judged as the agent's behaviour
    (see :class:`AgentAsAnomalySubject`), besides each entry's own check.
    """
    api.service.issuer.anomaly.check(
        AgentAsAnomalySubject(agent, api.service.trust_domain),
        AnomalyRequest(
            kind,
            datetime.now(UTC),
            audiences=audiences,
            count=count,
            by_proof=True,
            attested_at=_attested_at(api, agent),
        ),
    )


def _mine(agent: AgentView, entry_ids: list[str]) -> dict[str, Any]:
    """The requested entries, all of which must be this agent's to serve."""
    current = state().service.issuer.state()
    served = {e.id: e for e in authorized_entries(current.entries, agent, datetime.now(UTC))}
    missing = [i for i in entry_ids if i not in served]
    if missing:
        # Maybe created a moment ago through another replica: look once more.
        state().service.issuer.invalidate()
        current = state().service.issuer.state()
        served = {e.id: e for e in authorized_entries(current.entries, agent, datetime.now(UTC))}
        missing = [i for i in entry_ids if i not in served]
    if missing:
        api = state()
        try:  # counted for the agent's refusals signal; never in place of the 403
            api.service.issuer.anomaly.refused(
                AgentAsAnomalySubject(agent, api.service.trust_domain), datetime.now(UTC)
            )
        except (IdmintError, SQLAlchemyError):
            log.exception("anomaly: a refusal for agent %s was not counted", agent.spiffe_id)
        raise AgentForbidden(
            f"agent {agent.spiffe_id} does not serve entr{'y' if len(missing) == 1 else 'ies'} "
            f"{missing} (not parented to it, disabled or expired); nothing was issued"
        )
    return served


@blueprint.post("/v1/agent/x509")
def x509_batch() -> Any:
    """``{"requests": [{"entry_id", "csr"}, ...]}`` -> one X509-SVID per request."""
    data = body()
    limit_address()
    wanted = data.get("requests")
    if not isinstance(wanted, list) or not wanted or len(wanted) > MAX_BATCH:
        raise BadRequest(f"'requests' must be a list of 1-{MAX_BATCH} {{entry_id, csr}} objects")
    pairs: list[tuple[str, str]] = []
    for item in wanted:
        if not isinstance(item, dict):
            raise BadRequest("each request must be an object with 'entry_id' and 'csr'")
        entry_id, csr = _text(item, "entry_id"), _text(item, "csr")
        pairs.append((entry_id, csr))
    api = state()
    with spends.collecting(datetime.now(UTC)) as spend:
        agent = authenticate(spend=True)
        limit_identity(agent.spiffe_id)
        served = _mine(agent, [entry_id for entry_id, _ in pairs])
        # Every CSR is checked before anything is signed: a bad one refuses the batch.
        checked = [_checked_csr(api, csr) for _, csr in pairs]
        _check_agent(api, agent, "agent-x509", len(pairs))
    via = agent.via()
    requests = [
        X509Request(
            [*served[entry_id].selectors, *via],
            csr.encode("ascii", "replace"),
            served[entry_id].spiffe_id,
            good,
        )
        for (entry_id, csr), good in zip(pairs, checked, strict=True)
    ]
    # All records (and the proof's spend) in one commit, made while the
    # certificates are signed; nothing is returned before it.
    issued = metrics.timed(
        "x509-agent-workload",
        lambda: api.service.issuer.issue_x509_batch(
            requests, actor=f"agent:{agent.spiffe_id}", spend=spend
        ),
    )
    # No bundle per SVID: the agent has it from its sync, and a batch of 100
    # would carry the same PEM 100 times.
    svids = [
        {
            "entry_id": entry_id,
            "spiffe_id": svid.spiffe_id,
            "chain_pem": svid.chain_pem,
            "serial": svid.serial,
            "expires_at": svid.expires_at.isoformat().replace("+00:00", "Z"),
        }
        for (entry_id, _), svid in zip(pairs, issued, strict=True)
    ]
    return jsonify({"svids": svids}), 201


@blueprint.post("/v1/agent/jwt")
def jwt() -> Any:
    """``{"entry_id", "audience"}`` -> a JWT-SVID for one of the agent's entries."""
    data = body()
    limit_address()
    entry_id = _text(data, "entry_id")
    audiences = _audiences(data)
    api = state()
    with spends.collecting(datetime.now(UTC)) as spend:
        agent = authenticate(spend=True)
        limit_identity(agent.spiffe_id)
        entry = _mine(agent, [entry_id])[entry_id]
        _check_agent(api, agent, "agent-jwt", 1, tuple(audiences))
    svid = metrics.timed(
        "jwt-agent-workload",
        lambda: api.service.issuer.issue_jwt(
            [*entry.selectors, *agent.via()],
            audiences,
            entry.spiffe_id,
            actor=f"agent:{agent.spiffe_id}",
            spend=spend,
        ),
    )
    return jsonify(
        {
            "spiffe_id": svid.spiffe_id,
            "token": svid.token,
            "jti": svid.jti,
            "expires_at": svid.expires_at.isoformat().replace("+00:00", "Z"),
        }
    ), 201


# -- admin ------------------------------------------------------------------


@blueprint.post("/v1/agent-tokens")
def create_token() -> Any:
    """``{"ttl_seconds"}`` -> a one-time node join token (shown once)."""
    actor = require_admin()
    data = body()
    ttl = data.get("ttl_seconds", 600)
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise BadRequest("'ttl_seconds' must be an integer")
    made = _registry(state()).create_token(timedelta(seconds=ttl), actor)
    return jsonify(
        {
            "id": made.id,
            "token": made.token,
            "spiffe_id": made.spiffe_id,
            "expires_at": made.expires_at.isoformat().replace("+00:00", "Z"),
        }
    ), 201


@blueprint.get("/v1/agents")
def list_agents() -> Any:
    """Every attested agent, or ``?spiffe_id=`` one of them."""
    require_admin()
    registry = _registry(state())
    wanted = request.args.get("spiffe_id")
    if wanted:
        return jsonify(registry.get(wanted).to_json())
    return jsonify([agent.to_json() for agent in registry.list()])


@blueprint.post("/v1/agents/ban")
def ban() -> Any:
    """``{"spiffe_id"}``: the agent and its workloads get nothing more."""
    actor = require_admin()
    spiffe_id = _text(body(), "spiffe_id")
    api = state()
    banned = _registry(api).ban(spiffe_id, actor)
    api.service.issuer.invalidate()
    return jsonify(banned.to_json())
