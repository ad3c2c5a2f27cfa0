"""The OpenAPI 3.1 document served at ``/v1/openapi.json``.

Written by hand next to the handlers and checked against the running server
by schemathesis in the tests: every status a route can answer is listed.
"""

from __future__ import annotations

from typing import Any

from idmint import __version__
from idmint.ca.revocation.revocations import REASONS

PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problems(*statuses: int) -> dict[str, Any]:
    names = {
        400: "The request is malformed or names invalid values",
        401: "Attestation or authentication failed",
        403: "Not allowed for this identity",
        404: "No such resource",
        405: "Method not allowed",
        409: "Conflicts with the current state",
        413: "Request body too large",
        415: "Unsupported media type",
        429: "Rate limited (Retry-After; the body names the level and rule)",
        503: "The HSM or database is unavailable",
    }
    return {
        str(s): {
            "description": names[s],
            "content": {"application/problem+json": {"schema": PROBLEM}},
        }
        for s in statuses
    }


_COMMON = (400, 405, 413, 429, 503)
_ISSUE = (*_COMMON, 401, 403, 409)
_ADMIN = (*_COMMON, 401, 403, 404, 409)


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


#: Every string the API takes is refused when empty; the schema says so.
NON_EMPTY: dict[str, Any] = {"type": "string", "minLength": 1}
ATTESTATION = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["join_token", "oidc", "k8s_psat", "x509pop"]},
        "token": NON_EMPTY,
        "nonce": NON_EMPTY,
        "chain": NON_EMPTY,
        "signature": NON_EMPTY,
    },
}
PROOF = {
    "type": "object",
    "required": ["chain", "timestamp", "signature"],
    "properties": {
        "chain": {**NON_EMPTY, "description": "PEM chain of the current X509-SVID"},
        "timestamp": {"type": "integer"},
        "signature": {**NON_EMPTY, "description": "base64 signature by the SVID key"},
    },
}
ANOMALY_POLICY = {
    "type": "object",
    "properties": {
        "policy": {"type": "string", "enum": ["observe", "throttle", "step-up", "deny", ""]},
        "learn": {"type": "boolean"},
        "exempt": {"type": "boolean"},
    },
}
CHECKPOINT = {
    "type": "object",
    "required": ["number", "seq", "hash", "time", "kid", "checkpoint"],
    "properties": {
        "number": {"type": "integer"},
        "seq": {"type": "integer", "description": "audit event the checkpoint covers"},
        "hash": {"type": "string", "description": "that event's chained SHA-256 (hex)"},
        "time": {"type": "string", "format": "date-time"},
        "kid": {"type": "string"},
        "checkpoint": {"type": "string", "description": "compact JWS over the above"},
    },
}
X509_RESPONSE = {
    "type": "object",
    "required": ["spiffe_id", "chain_pem", "bundle_pem", "serial", "expires_at"],
    "properties": {
        "spiffe_id": {"type": "string"},
        "chain_pem": {"type": "string"},
        "bundle_pem": {"type": "string"},
        "serial": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"},
    },
}
ENTRY = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "readOnly": True, "description": "set by the server"},
        "spiffe_id": {"type": "string"},
        "selectors": {"type": "array", "items": {"type": "string"}},
        "owner": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"},
        "x509_ttl_seconds": {"type": "integer", "minimum": 60, "maximum": 3600},
        "jwt_ttl_seconds": {"type": "integer", "minimum": 60, "maximum": 900},
        "audiences": {"type": "array", "items": {"type": "string"}},
        "dns_names": {"type": "array", "items": {"type": "string"}},
        "admin": {"type": "boolean"},
        "disabled": {"type": "boolean"},
        "warnings": {
            "type": "array",
            "items": {"type": "string"},
            "readOnly": True,
            "description": "on create: selectors no attestor this server runs produces",
        },
    },
}
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"svidProof": []}]


def document() -> dict[str, Any]:
    entry_id = {"name": "entry_id", "in": "path", "required": True, "schema": {"type": "string"}}
    token_id = {"name": "token_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "idmint", "version": __version__},
        "paths": {
            "/v1/svid/x509": {
                "post": {
                    "summary": "Attest and get an X509-SVID for a CSR",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["attestation", "csr"],
                            "properties": {
                                "attestation": ATTESTATION,
                                "csr": {**NON_EMPTY, "description": "PKCS#10, PEM"},
                                "spiffe_id": {"type": "string"},
                            },
                        }
                    ),
                    "responses": {"201": _json(X509_RESPONSE, "Issued"), **_problems(*_ISSUE)},
                }
            },
            "/v1/svid/x509/renew": {
                "post": {
                    "summary": "Renew an X509-SVID by proof of possession",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["proof", "csr"],
                            "properties": {"proof": PROOF, "csr": NON_EMPTY},
                        }
                    ),
                    "responses": {"201": _json(X509_RESPONSE, "Issued"), **_problems(*_ISSUE)},
                }
            },
            "/v1/svid/x509/status": {
                "post": {
                    "summary": "Should the holder of this X509-SVID renew now?",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["chain"],
                            "properties": {"chain": NON_EMPTY},
                        }
                    ),
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["serial", "renew_now", "reasons", "renew_after"],
                            }
                        ),
                        **_problems(*_COMMON),
                    },
                }
            },
            "/v1/svid/jwt": {
                "post": {
                    "summary": "Get a JWT-SVID by attestation or SVID proof",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["audience"],
                            "properties": {
                                "attestation": ATTESTATION,
                                "proof": PROOF,
                                "audience": {
                                    "oneOf": [
                                        NON_EMPTY,
                                        {"type": "array", "items": NON_EMPTY, "minItems": 1},
                                    ]
                                },
                                "spiffe_id": {"type": "string"},
                            },
                        }
                    ),
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["spiffe_id", "token", "expires_at"],
                                "properties": {
                                    "spiffe_id": {"type": "string"},
                                    "token": {"type": "string"},
                                    "expires_at": {"type": "string"},
                                },
                            },
                            "Issued",
                        ),
                        **_problems(*_ISSUE),
                    },
                }
            },
            "/v1/nonce": {
                "get": {
                    "summary": "A single-use nonce for x509pop",
                    "responses": {
                        "200": _json({"type": "object", "required": ["nonce", "expires_at"]}),
                        **_problems(*_COMMON),
                    },
                }
            },
            "/v1/bundle": {
                "get": {
                    "summary": "The SPIFFE trust bundle",
                    "parameters": [
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["jwks", "pem"]},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {"schema": {"type": "object"}},
                                "application/x-pem-file": {"schema": {"type": "string"}},
                            },
                        },
                        **_problems(*_COMMON),
                    },
                }
            },
            "/v1/jwks": {
                "get": {
                    "summary": "JWT-SVID keys (OIDC JWKS)",
                    "responses": {"200": _json({"type": "object"}), **_problems(*_COMMON)},
                }
            },
            "/v1/audit/checkpoints": {
                "get": {
                    "summary": "The newest signed audit checkpoint (compact JWS, ES256)",
                    "responses": {
                        "200": _json(CHECKPOINT),
                        **_problems(*_COMMON, 404),
                    },
                }
            },
            "/v1/audit/checkpoints/{number}": {
                "parameters": [
                    {
                        "name": "number",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                    }
                ],
                "get": {
                    "summary": "Audit checkpoint by number",
                    "responses": {
                        "200": _json(CHECKPOINT),
                        **_problems(*_COMMON, 404),
                    },
                },
            },
            "/v1/audit/keys": {
                "get": {
                    "summary": "Audit checkpoint keys (JWKS; not in the SPIFFE bundle)",
                    "responses": {"200": _json({"type": "object"}), **_problems(*_COMMON)},
                }
            },
            "/v1/anomalies": {
                "get": {
                    "summary": "Anomaly baselines and standing decisions",
                    "security": ADMIN_SECURITY,
                    "responses": {"200": _json({"type": "object"}), **_problems(*_ADMIN)},
                }
            },
            "/v1/anomalies/{entry_id}": {
                "parameters": [entry_id],
                "get": {
                    "summary": "One entry's anomaly baseline and decision",
                    "security": ADMIN_SECURITY,
                    "responses": {"200": _json({"type": "object"}), **_problems(*_ADMIN)},
                },
                "delete": {
                    "summary": "Clear the entry's anomaly decision (?forget=true: and baseline)",
                    "security": ADMIN_SECURITY,
                    "parameters": [
                        {
                            "name": "forget",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["true", "false"]},
                        }
                    ],
                    "responses": {"200": _json({"type": "object"}), **_problems(*_ADMIN)},
                },
                "patch": {
                    "summary": "Set the entry's anomaly policy, learning, exemption",
                    "security": ADMIN_SECURITY,
                    "requestBody": _body(ANOMALY_POLICY),
                    "responses": {"200": _json({"type": "object"}), **_problems(*_ADMIN)},
                },
            },
            "/v1/anomaly-policy": {
                "patch": {
                    "summary": "Set the trust domain's default anomaly policy and learning",
                    "security": ADMIN_SECURITY,
                    "requestBody": _body(ANOMALY_POLICY),
                    "responses": {"200": _json({"type": "object"}), **_problems(*_ADMIN)},
                }
            },
            "/.well-known/openid-configuration": {
                "get": {
                    "summary": "OIDC discovery",
                    "responses": {"200": _json({"type": "object"}), **_problems(*_COMMON)},
                }
            },
            "/v1/entries": {
                "get": {
                    "summary": "List registration entries",
                    "security": ADMIN_SECURITY,
                    "responses": {"200": _json({"type": "object"}), **_problems(*_ADMIN)},
                },
                "post": {
                    "summary": "Create a registration entry",
                    "security": ADMIN_SECURITY,
                    "requestBody": _body(ENTRY),
                    "responses": {"201": _json(ENTRY, "Created"), **_problems(*_ADMIN)},
                },
            },
            "/v1/entries/{entry_id}": {
                "parameters": [entry_id],
                "get": {
                    "summary": "Show an entry",
                    "security": ADMIN_SECURITY,
                    "responses": {"200": _json(ENTRY), **_problems(*_ADMIN)},
                },
                "patch": {
                    "summary": "Change an entry",
                    "security": ADMIN_SECURITY,
                    "requestBody": _body(ENTRY),
                    "responses": {"200": _json(ENTRY), **_problems(*_ADMIN)},
                },
                "delete": {
                    "summary": "Delete an entry",
                    "security": ADMIN_SECURITY,
                    "responses": {"204": {"description": "Deleted"}, **_problems(*_ADMIN)},
                },
            },
            "/v1/join-tokens": {
                "get": {
                    "summary": "List join tokens",
                    "security": ADMIN_SECURITY,
                    "responses": {"200": _json({"type": "object"}), **_problems(*_ADMIN)},
                },
                "post": {
                    "summary": "Create a join token",
                    "security": ADMIN_SECURITY,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["spiffe_id"],
                            "properties": {
                                "spiffe_id": {"type": "string"},
                                "ttl_seconds": {"type": "integer"},
                            },
                        }
                    ),
                    "responses": {
                        "201": _json({"type": "object"}, "Created"),
                        **_problems(*_ADMIN),
                    },
                },
            },
            "/v1/join-tokens/{token_id}": {
                "parameters": [token_id],
                "delete": {
                    "summary": "Revoke a join token",
                    "security": ADMIN_SECURITY,
                    "responses": {"204": {"description": "Revoked"}, **_problems(*_ADMIN)},
                },
            },
            "/v1/crl": {
                "get": {
                    "summary": "CRL of the issuing authority (DER)",
                    "responses": {
                        "200": {
                            "description": "DER CRL",
                            "content": {"application/pkix-crl": {"schema": {"type": "string"}}},
                        },
                        **_problems(*_COMMON),
                    },
                }
            },
            "/v1/ocsp": {
                "post": {
                    "summary": "OCSP (RFC 6960), DER request in the body",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/ocsp-request": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "DER OCSP response (may be unsuccessful)",
                            "content": {
                                "application/ocsp-response": {"schema": {"type": "string"}}
                            },
                        },
                        **_problems(*_COMMON),
                    },
                }
            },
            "/v1/ocsp/{request}": {
                "get": {
                    "summary": "OCSP (RFC 6960 appendix A.1): base64 DER request in the path",
                    "parameters": [
                        {
                            "name": "request",
                            "in": "path",
                            "required": True,
                            "schema": NON_EMPTY,
                            "description": "base64 (URL-encoded) DER OCSPRequest",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "DER OCSP response (may be unsuccessful)",
                            "content": {
                                "application/ocsp-response": {"schema": {"type": "string"}}
                            },
                        },
                        **_problems(*_COMMON),
                    },
                }
            },
            "/v1/svid/jwt/validate": {
                "post": {
                    "summary": "Validate a JWT-SVID for an audience (honours revocations)",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["token", "audience"],
                            "properties": {"token": NON_EMPTY, "audience": NON_EMPTY},
                        }
                    ),
                    "responses": {
                        "200": _json({"type": "object", "required": ["spiffe_id", "claims"]}),
                        **_problems(*_COMMON, 401),
                    },
                }
            },
            "/v1/revocations": {
                "post": {
                    "summary": "Revoke an X509-SVID, a JWT-SVID or an entry",
                    "security": ADMIN_SECURITY,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["kind"],
                            "properties": {
                                "kind": {
                                    "type": "string",
                                    "enum": ["x509", "jwt", "entry", "authority"],
                                },
                                "id": {"type": "integer"},
                                "serial": {"type": "string"},
                                "jti": {"type": "string"},
                                "entry_id": {"type": "string"},
                                "reason": {
                                    "type": "string",
                                    "enum": sorted(REASONS),
                                    "default": "unspecified",
                                },
                            },
                        }
                    ),
                    "responses": {
                        "201": _json({"type": "object"}, "Revoked"),
                        **_problems(*_ADMIN),
                    },
                }
            },
            "/healthz": {"get": {"responses": {"200": _json({"type": "object"})}}},
            "/readyz": {
                "get": {
                    "responses": {
                        "200": _json({"type": "object"}),
                        "503": _json({"type": "object"}, "Not ready"),
                    }
                }
            },
            "/metrics": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_problems(503),
                    }
                }
            },
        },
        "components": {
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                    },
                }
            },
            "securitySchemes": {
                "svidProof": {"type": "apiKey", "in": "header", "name": "X-Idmint-Proof"}
            },
        },
    }
