"""The trust bundle and OIDC discovery, for workloads and for OIDC consumers.

``/v1/bundle`` is the SPIFFE bundle (JWKS with x509-svid and jwt-svid keys,
or PEM). ``/.well-known/openid-configuration`` and its ``jwks_uri`` let
cloud IAM, Vault's JWT auth and any OIDC library trust JWT-SVIDs; that JWKS
carries only the JWT keys, with ``use: sig`` and ``alg`` as OIDC expects.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from idmint.ca.api.context import state
from idmint.ca.authority.authorities import JWT_KEY_TYPES
from idmint.ca.errors import CAError

blueprint = Blueprint("bundle", __name__)


class InvalidQuery(CAError):
    """A query parameter of this request is not one this endpoint takes."""

    code = "invalid-query"


@blueprint.get("/v1/bundle")
def bundle() -> Any:
    """The SPIFFE trust bundle: JWKS by default, ``?format=pem`` for PEM roots."""
    current = state().service.issuer.bundle()
    fmt = request.args.get("format", "jwks")
    if fmt == "pem":
        return Response(current.pem(), mimetype="application/x-pem-file")
    if fmt != "jwks":
        raise InvalidQuery(f"?format={fmt} is not one of jwks, pem")
    response = jsonify(current.jwks())
    response.headers["Cache-Control"] = f"max-age={current.refresh_hint}"
    return response


@blueprint.get("/.well-known/openid-configuration")
def discovery() -> Any:
    """OpenID Connect Discovery 1.0 metadata for JWT-SVID consumers."""
    config = state().service.config
    issuer = config.issuer_url.rstrip("/")
    return jsonify(
        {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted(JWT_KEY_TYPES),
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti"],
        }
    )


@blueprint.get("/v1/jwks")
def jwks() -> Any:
    """The JWT-SVID signing keys as a plain OIDC JWKS."""
    return jsonify(state().service.issuer.bundle().oidc_jwks())
