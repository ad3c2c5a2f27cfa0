"""``/healthz`` (the process answers), ``/readyz`` (HSM and database reachable), ``/metrics``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from idmint.ca.api import metrics
from idmint.ca.api.context import state
from idmint.ca.storage.models import AuthorityKind
from idmint.errors import IdmintError

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> Any:
    checks: dict[str, str] = {}
    try:
        api = state()
        with api.service.database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
        api.service.keystore.list_keys()
        checks["hsm"] = "ok"
        api.service.issuer.state()
        checks["authorities"] = "ok"
    except (IdmintError, OSError, Exception) as exc:  # readiness reports, never raises
        failed = next((k for k in ("database", "hsm", "authorities") if k not in checks), "?")
        checks[failed] = f"failed: {type(exc).__name__}: {exc}"[:300]
        return jsonify({"status": "unavailable", "checks": checks}), 503
    return jsonify({"status": "ready", "checks": checks})


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
