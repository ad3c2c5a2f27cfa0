"""Errors as RFC 9457 problem documents.

One table maps each error class to an HTTP status; the problem ``type`` is
a URI built from the error's ``code``. The ``detail`` is the error's own
message, which names the problem and never carries secrets.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from werkzeug.exceptions import HTTPException

from idmint.errors import IdmintError

TYPE_BASE = "https://idmint.dev/problems/"

#: Error code -> HTTP status. Codes not listed are 400 (the caller's input).
STATUS_BY_CODE: dict[str, int] = {
    "entry-not-found": 404,
    "authority-not-found": 503,
    "authority-conflict": 409,
    "no-matching-entry": 403,
    "audience-not-allowed": 403,
    "ambiguous-entry": 409,
    "attestation-failed": 401,
    "evidence-replayed": 401,
    "unauthenticated": 401,
    "forbidden": 403,
    "not-found": 404,
    "rate-limited": 429,
    "anomaly-throttled": 429,
    "step-up-required": 401,
    "anomaly-denied": 403,
    "revoked": 403,
    "already-revoked": 409,
    "invalid-transition": 409,
    "invalid-jwt-svid": 401,
    "hsm-error": 503,
    "writer-unavailable": 503,
    "hsm-session-lost": 503,
    "hsm-signing-failed": 503,
    "hsm-key-not-found": 503,
    "hsm-token-not-found": 503,
    "hsm-module-not-found": 503,
    "hsm-pin": 503,
    "config-error": 500,
    "idmint-error": 500,
}


def problem(status: int, title: str, detail: str, code: str, **extra: Any) -> Response:
    body = {"type": TYPE_BASE + code, "title": title, "status": status, "detail": detail, **extra}
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def from_error(error: IdmintError) -> Response:
    status = STATUS_BY_CODE.get(error.code, 400)
    title = type(error).__doc__ or type(error).__name__
    return problem(status, title.strip().splitlines()[0], str(error), error.code)


def from_http(error: HTTPException) -> Response:
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "-")
    return problem(status, error.name or "Error", error.description or "", code)
