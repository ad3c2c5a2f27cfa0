"""``/v1/svid``: X509-SVIDs and JWT-SVIDs for attested workloads, and renewal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from flask import Blueprint, jsonify, request

from idmint.attestation.base import AttestationFailed
from idmint.ca.api import metrics
from idmint.ca.api.context import state
from idmint.ca.api.limits import attestation_attempt, limit_address, limit_identity
from idmint.ca.api.observe import set_caller
from idmint.ca.errors import BadRequest
from idmint.ca.issuance.issuer import X509SVID
from idmint.ca.issuance.pop import issuer_kid, jwt_payload, verify_proof
from idmint.ca.storage import spends
from idmint.ca.x509.csr import check_csr
from idmint.errors import IdmintError

blueprint = Blueprint("svid", __name__)


def body() -> dict[str, Any]:
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        data = None  # absurdly nested JSON is as malformed as any other
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    return data


def _text(data: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string")
    return value


def _audiences(data: dict[str, Any]) -> list[str]:
    value = data.get("audience")
    audiences = [value] if isinstance(value, str) else value
    if (
        not isinstance(audiences, list)
        or not audiences
        or not all(isinstance(a, str) and a for a in audiences)
    ):
        raise BadRequest("'audience' must be a non-empty string or list of strings")
    return list(audiences)


def _x509_response(svid: X509SVID) -> dict[str, Any]:
    return {
        "spiffe_id": svid.spiffe_id,
        "chain_pem": svid.chain_pem,
        "bundle_pem": svid.bundle_pem,
        "serial": svid.serial,
        "expires_at": svid.expires_at.isoformat().replace("+00:00", "Z"),
    }


@blueprint.post("/v1/svid/x509")
def x509_svid() -> Any:
    """Attestation evidence + CSR -> X509-SVID."""
    data = body()
    limit_address()
    csr = _text(data, "csr")
    spiffe_id = _text(data, "spiffe_id", required=False)
    api = state()
    # The CSR first: a malformed one must not burn single-use evidence. Input
    # that attests nothing is counted, not audited (anyone can send it).
    try:
        checked = check_csr((csr or "").encode("ascii", "replace"))
    except IdmintError as error:
        metrics.count_refusal("x509-svid.csr", error.code)
        raise
    with spends.collecting(datetime.now(UTC)) as spend:
        attested = api.attest(data.get("attestation"), spend.now)
        svid = metrics.timed(
            "x509",
            lambda: api.service.issuer.issue_x509(
                attested.selectors,
                (csr or "").encode("ascii", "replace"),
                spiffe_id,
                actor=attested.subject,
                granted=attested.spiffe_id,
                checked=checked,
                spend=spend,
            ),
        )
    return jsonify(_x509_response(svid)), 201


@blueprint.post("/v1/svid/jwt")
def jwt_svid() -> Any:
    """Attestation evidence, or proof of a current X509-SVID, + audience -> JWT-SVID."""
    data = body()
    limit_address()
    audiences = _audiences(data)
    spiffe_id = _text(data, "spiffe_id", required=False)
    api = state()
    with spends.collecting(datetime.now(UTC)) as spend:
        if "proof" in data:
            proven = _prove(data["proof"], "jwt-svid", jwt_payload(audiences), spend)
            selectors: tuple[str, ...] = ()
            actor, granted = f"svid:{proven}", proven
            granted_id: str | None = granted
        else:
            attested = api.attest(data.get("attestation"), spend.now)
            selectors, actor, granted_id = attested.selectors, attested.subject, attested.spiffe_id
        svid = metrics.timed(
            "jwt",
            lambda: api.service.issuer.issue_jwt(
                selectors, audiences, spiffe_id, actor=actor, granted=granted_id, spend=spend
            ),
        )
    return jsonify(
        {
            "spiffe_id": svid.spiffe_id,
            "token": svid.token,
            "expires_at": svid.expires_at.isoformat().replace("+00:00", "Z"),
        }
    ), 201


def _prove(proof: Any, purpose: str, payload: bytes, spend: spends.Spend) -> str:
    """Verify a proof of possession; return the proven SPIFFE ID.

    The proof is spent with the credential it pays for (``spend``).
    """
    api = state()
    issuer = api.service.issuer
    with attestation_attempt():
        proven = verify_proof(
            proof,
            purpose,
            payload,
            issuer.bundle().roots,
            spend.now,
            is_revoked=issuer.is_revoked,
        )
        check_issuers(issuer, proven)
        set_caller(f"svid:{proven.spiffe_id}")
        limit_identity(proven.spiffe_id)  # before the spend: a refusal burns nothing
        spend.keys.append(proven.replay_key)
    return proven.spiffe_id


#: Authorities whose SVIDs may still prove anything: a retired one signed
#: before it was rotated out; tainted, removed or unknown ones may not.
TRUSTED_STATES = frozenset({"active", "retired"})


def check_issuers(issuer: Any, proven: Any) -> None:
    """Refuse a proof whose intermediate or root is not in a trusted state.

    A tainted authority's key may be in someone else's hands, who could mint
    an SVID for any SPIFFE ID; such SVIDs must not renew or administer.
    """
    for role, kid in (("intermediate", proven.issuer_kid), ("root", proven.root_kid)):
        found = issuer.authority_state(kid)
        if found not in TRUSTED_STATES:
            raise AttestationFailed(
                f"this SVID was issued under a {found or 'unknown'} {role} authority and "
                "cannot be used to renew or authenticate; attest again to get a new one"
            )


@blueprint.post("/v1/svid/x509/status")
def status() -> Any:
    """Whether the holder of this X509-SVID should renew now (revoked, issuer tainted)."""
    data = body()
    limit_address()
    chain = _text(data, "chain")
    assert chain is not None
    issuer = state().service.issuer
    try:
        leaf = x509.load_pem_x509_certificates(chain.encode("ascii", "replace"))[0]
    except (ValueError, IndexError):
        raise BadRequest("'chain' must be a PEM certificate chain") from None
    serial = format(leaf.serial_number, "x")
    reasons = []
    if issuer.is_revoked(serial):
        reasons.append("revoked")
    issuer_state = issuer.authority_state(issuer_kid(leaf))
    if issuer_state is None:
        reasons.append("not issued by this trust domain")
    elif issuer_state in ("tainted", "removed"):
        reasons.append(f"issuer {issuer_state}")
    begins, ends = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    renew_after = begins + (ends - begins) / 2
    now = datetime.now(UTC)
    return jsonify(
        {
            "serial": serial,
            "renew_now": bool(reasons) or now >= renew_after,
            "reasons": reasons,
            "renew_after": renew_after.isoformat().replace("+00:00", "Z"),
            "expires_at": ends.isoformat().replace("+00:00", "Z"),
        }
    )


@blueprint.post("/v1/svid/x509/renew")
def renew() -> Any:
    """Proof of possession of a current X509-SVID + new CSR -> new X509-SVID."""
    data = body()
    limit_address()
    csr = _text(data, "csr")
    assert csr is not None
    api = state()
    if "proof" not in data:
        raise AttestationFailed("renewal needs 'proof': a signature by the current SVID's key")
    with spends.collecting(datetime.now(UTC)) as spend:
        spiffe_id = _prove(data["proof"], "x509-renew", csr.encode("ascii", "replace"), spend)
        svid = metrics.timed(
            "x509-renew",
            lambda: api.service.issuer.issue_x509(
                (),
                csr.encode("ascii", "replace"),
                actor=f"svid:{spiffe_id}",
                granted=spiffe_id,
                spend=spend,
            ),
        )
    return jsonify(_x509_response(svid)), 201


@blueprint.get("/v1/nonce")
def nonce() -> Any:
    """A single-use nonce for x509pop attestation."""
    limit_address()
    value, expires = state().nonces.issue("x509pop")
    return jsonify({"nonce": value, "expires_at": expires.isoformat().replace("+00:00", "Z")})
