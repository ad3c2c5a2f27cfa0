"""Revocation over HTTP: CRL, OCSP, JWT-SVID validation with the denylist, admin revocations."""

from __future__ import annotations

import base64
import binascii
import threading
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select

from idmint.ca.api.auth import require_admin
from idmint.ca.api.context import state
from idmint.ca.api.limits import limit_address
from idmint.ca.api.svid import BadRequest, body
from idmint.ca.jose.jwtsvid import InvalidJWTSVID, jwks_keys, validate_jwt_svid
from idmint.ca.revocation.crl import CRLPublisher
from idmint.ca.revocation.ocsp import respond
from idmint.ca.revocation.revocations import revoke_credential, revoke_entry
from idmint.ca.storage.models import CredentialKind, IssuedCredential, Revocation

blueprint = Blueprint("revocation", __name__)
_crl_lock = threading.Lock()


def _crl_publisher() -> CRLPublisher:
    """This worker's CRL publisher, made on the first CRL request."""
    with _crl_lock:
        publisher: CRLPublisher | None = current_app.extensions.get("idmint.crl")
        if publisher is None:
            publisher = CRLPublisher(state().service.database)
            current_app.extensions["idmint.crl"] = publisher
    return publisher


@blueprint.get("/v1/crl")
def crl() -> Any:
    """The DER CRL of the active issuing authority, signed in the HSM, built off the request."""
    limit_address()
    ca = state().service.issuer.state().ca
    der = _crl_publisher().der(ca.row.id, ca.certificate, ca.key)
    return Response(der, mimetype="application/pkix-crl")


def _status(serial: str) -> tuple[str, datetime | None, str | None] | None:
    database = state().service.database
    with database.reading() as session:
        revoked = session.execute(
            select(Revocation.revoked_at, Revocation.reason)
            .where(Revocation.kind == CredentialKind.X509)
            .where(Revocation.identifier == serial)
        ).first()
        if revoked is not None:
            return ("revoked", revoked.revoked_at, revoked.reason)
        issued = session.scalar(
            select(IssuedCredential.id)
            .where(IssuedCredential.kind == CredentialKind.X509)
            .where(IssuedCredential.identifier == serial)
        )
    return None if issued is None else ("good", None, None)


def _ocsp(request_der: bytes) -> Response:
    limit_address()
    ca = state().service.issuer.state().ca
    issuers: list[tuple[x509.Certificate, object]] = [(ca.certificate, ca.key)]
    der = respond(request_der, issuers, _status, datetime.now(UTC))
    return Response(der, mimetype="application/ocsp-response")


@blueprint.post("/v1/ocsp")
def ocsp_post() -> Any:
    """RFC 6960 over HTTP POST (application/ocsp-request)."""
    der = request.get_data()
    if not der:
        raise BadRequest(
            "the body must be a DER OCSP request (Content-Type: application/ocsp-request)"
        )
    return _ocsp(der)


@blueprint.get("/v1/ocsp/<path:encoded>")
def ocsp_get(encoded: str) -> Any:
    """RFC 6960 appendix A.1 GET: the base64 DER request in the path."""
    try:
        der = base64.b64decode(encoded.replace("%2F", "/").replace("%2B", "+"), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the OCSP request in the URL is not base64") from None
    return _ocsp(der)


@blueprint.post("/v1/svid/jwt/validate")
def validate_jwt() -> Any:
    """Validate a JWT-SVID for an audience, honouring revocations (like ValidateJWTSVID)."""
    data = body()
    limit_address()
    token, audience = data.get("token"), data.get("audience")
    if not isinstance(token, str) or not isinstance(audience, str) or not audience:
        raise BadRequest("'token' and 'audience' (strings) are required")
    service = state().service
    bundle = service.issuer.bundle()
    claims = validate_jwt_svid(
        token, audience, jwks_keys(bundle.jwks()), service.trust_domain, datetime.now(UTC)
    )
    # What this CA puts in every JWT-SVID it signs: anything else was not
    # made by this server's issuance, and without a jti it cannot be revoked.
    if claims.get("iss") != service.issuer.issuer_url:
        raise InvalidJWTSVID(
            f"JWT-SVID iss {claims.get('iss')!r} is not this server ({service.issuer.issuer_url})"
        )
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise InvalidJWTSVID("JWT-SVID has no jti, so it could not be revoked: refused")
    with service.database.session() as session:
        denied = session.scalar(
            select(Revocation.id)
            .where(Revocation.kind == CredentialKind.JWT)
            .where(Revocation.identifier == str(claims.get("jti")))
        )
    if denied is not None:
        raise InvalidJWTSVID(f"JWT-SVID {claims.get('jti')} was revoked")
    return jsonify({"spiffe_id": claims["sub"], "claims": claims})


@blueprint.post("/v1/revocations")
def revoke() -> Any:
    """Admin: revoke an X509-SVID (serial), a JWT-SVID (jti) or an entry (id)."""
    actor = require_admin()
    data = body()
    kind, reason = data.get("kind"), data.get("reason", "unspecified")
    if not isinstance(reason, str):
        raise BadRequest("'reason' must be a string")
    service = state().service
    if kind == "authority":
        from idmint.ca.authority.rotation import revoke as revoke_authority

        authority_id = data.get("id")
        if isinstance(authority_id, bool) or not isinstance(authority_id, int):
            raise BadRequest("'id' (integer) is required to revoke an authority")
        row = revoke_authority(service.keystore, service.database, authority_id, actor)
        service.issuer.invalidate()
        return jsonify({"revoked": [str(row.id)], "kind": "authority"}), 201
    if kind == "entry":
        entry_id = data.get("entry_id")
        if not isinstance(entry_id, str):
            raise BadRequest("'entry_id' (string) is required to revoke an entry")
        done = revoke_entry(service.database, entry_id, actor, reason)
        service.issuer.invalidate()
        return jsonify({"revoked": [d.identifier for d in done], "entry_id": entry_id}), 201
    if kind not in ("x509", "jwt"):
        raise BadRequest("'kind' must be x509, jwt, entry or authority")
    name = "serial" if kind == "x509" else "jti"
    identifier = data.get(name)
    if not isinstance(identifier, str) or not identifier:
        raise BadRequest(f"'{name}' (string) is required to revoke a {kind} credential")
    one = revoke_credential(service.database, CredentialKind(kind), identifier, actor, reason)
    return jsonify({"revoked": [one.identifier], "kind": kind}), 201
