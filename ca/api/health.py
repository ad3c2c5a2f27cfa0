"""``/healthz`` (the process answers), ``/readyz`` (issuance would work), ``/metrics``.

Also the app-wide answers to failures that are not one endpoint's own: a
refused attestation, admin call or rate-limit trip is audited (aggregated
per source and minute, :mod:`idmint.ca.storage.refusals`) and counted; a
database that does not answer is a 503; every 503 says when to retry and
every 405 which methods are allowed.
"""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import MethodNotAllowed, NotFound

from idmint.attestation.base import AttestationFailed
from idmint.ca.api import metrics
from idmint.ca.api.auth import PROOF_HEADER, Forbidden, Unauthenticated
from idmint.ca.api.context import state
from idmint.ca.api.problems import from_error, problem
from idmint.ca.storage.models import AuthorityKind
from idmint.errors import IdmintError

blueprint = Blueprint("health", __name__)

#: Seconds a client is told to wait after a 503 (the database or writer is away).
RETRY_AFTER = "1"


@blueprint.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


_CHECKS = ("database", "writer", "hsm", "authorities")


@blueprint.get("/readyz")
def readyz() -> Any:
    """Ready only if issuance would work: database writable in time, writer, HSM, authorities."""
    checks: dict[str, str] = {}
    try:
        api = state()
        database = api.service.database
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        if current_app.config.get("IDMINT_WRITER_SOCKET") is None:
            # No writer: this process writes, so its own write turn must be free.
            with database.connection() as connection:
                connection.exec_driver_sql("UPDATE audit_head SET seq = seq WHERE id = 1")
        checks["database"] = "ok"
        _check_writer(api)
        checks["writer"] = "ok"
        api.service.keystore.list_keys()
        checks["hsm"] = "ok"
        api.service.issuer.state()
        checks["authorities"] = "ok"
    except (IdmintError, OSError, Exception) as exc:  # readiness reports, never raises
        failed = next((k for k in _CHECKS if k not in checks), "?")
        checks[failed] = f"failed: {type(exc).__name__}: {exc}"[:300]
        response = jsonify({"status": "unavailable", "checks": checks})
        response.status_code = 503
        return response
    return jsonify({"status": "ready", "checks": checks})


def _check_writer(api: Any) -> None:
    """Under ``idmint server``: the writer answers and its database takes a write.

    A spend of a fresh, already-expired key is a real write through the same
    path issuance takes (purged like any expired key).
    """
    used = api.used
    if not hasattr(used, "path"):
        return
    now = datetime.now(UTC)
    key = f"readyz:{socket.gethostname()}:{uuid.uuid4().hex}"
    used.spend([(key, now - timedelta(seconds=1))], now)


@blueprint.get("/metrics")
def prometheus() -> Any:
    current = state().service.issuer.state()
    expiry = {
        AuthorityKind.INTERMEDIATE.value: current.ca.row.not_after.timestamp(),
        AuthorityKind.JWT.value: current.jwt.row.not_after.timestamp(),
    }
    # The root is rotated by hand, so its expiry is the one an operator must watch.
    signer = current.ca.certificate.issuer
    root = next((r for r in current.bundle.roots if r.subject == signer), None)
    if root is not None:
        expiry[AuthorityKind.ROOT.value] = root.not_valid_after_utc.timestamp()
    body, content_type = metrics.render(expiry)
    return Response(body, content_type=content_type)


# -- app-wide answers -------------------------------------------------------


def _refusal_action(error: IdmintError) -> str:
    if isinstance(error, Unauthenticated | Forbidden) or request.headers.get(PROOF_HEADER):
        return "admin.refused"
    return "attestation"


@blueprint.app_errorhandler(AttestationFailed)
@blueprint.app_errorhandler(Unauthenticated)
@blueprint.app_errorhandler(Forbidden)
def refused(error: IdmintError) -> Any:
    """Audit (aggregated per source and minute) and count, then answer as usual.

    Rate-limit refusals are audited by the limiter's hook
    (:func:`idmint.ca.api.limits.audit_if_bounded`) and answered there.

    If the audit cannot be written, the request fails with that error (503)
    instead: no refusal goes unaudited.
    """
    try:
        issuer = state().service.issuer
        issuer.refuse(_refusal_action(error), request.remote_addr or "-", error, ())
    except IdmintError as failure:
        return from_error(failure)
    return from_error(error)


@blueprint.app_errorhandler(DBAPIError)
@blueprint.app_errorhandler(PoolTimeout)
def database_failed(error: Exception) -> Any:
    """A database that failed or did not answer in time: 503, retry shortly."""
    current_app.logger.error("database failure: %s", error)
    return problem(
        503,
        "The database is not available",
        f"the database did not answer ({type(error).__name__}); retry shortly",
        "database-unavailable",
    )


@blueprint.after_app_request
def retry_and_allow(response: Response) -> Response:
    """Retry-After on every 503 (RFC 9110 10.2.3); Allow on every 405 (15.5.6)."""
    if response.status_code == 503 and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = RETRY_AFTER
    if response.status_code == 405 and "Allow" not in response.headers:
        adapter = current_app.url_map.bind_to_environ(request.environ)
        try:
            adapter.match(method="__idmint_probe__")
        except MethodNotAllowed as wrong:
            response.headers["Allow"] = ", ".join(sorted(wrong.valid_methods or ()))
        except (NotFound, Exception):  # no route: no Allow to give
            pass
    return response
