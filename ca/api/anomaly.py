"""Admin resources of the anomaly response: baselines, decisions, policies.

``GET /v1/anomalies`` (every entry's baseline and standing decision),
``GET /v1/anomalies/{entry_id}``, ``DELETE /v1/anomalies/{entry_id}``
(clear the decision; ``?forget=true`` also forgets the baseline),
``PATCH /v1/anomalies/{entry_id}`` and ``PATCH /v1/anomaly-policy`` (the
trust-domain default) with ``policy``, ``learn``, ``exempt``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from idmint.ca.anomaly import store
from idmint.ca.anomaly.policy import Settings
from idmint.ca.api.auth import require_admin
from idmint.ca.api.context import state
from idmint.ca.api.svid import BadRequest, body

blueprint = Blueprint("anomaly", __name__)


def _settings() -> Settings:
    config = state().service.config
    return Settings.from_section(config.extra.get("anomaly"), str(config.config_path))


@blueprint.get("/v1/anomalies")
def list_anomalies() -> Any:
    require_admin()
    settings = _settings()
    rows = store.list_all(state().service.database)
    return jsonify({"anomalies": [store.describe(b, settings) for b in rows]})


@blueprint.get("/v1/anomalies/<entry_id>")
def show_anomaly(entry_id: str) -> Any:
    require_admin()
    return jsonify(store.describe(store.get(state().service.database, entry_id), _settings()))


@blueprint.delete("/v1/anomalies/<entry_id>")
def clear_anomaly(entry_id: str) -> Any:
    actor = require_admin()
    forget = request.args.get("forget", "false") == "true"
    cleared = store.clear(state().service.database, entry_id, actor, forget=forget)
    return jsonify(store.describe(cleared, _settings()))


def _changes(data: dict[str, Any], allow_exempt: bool) -> dict[str, Any]:
    allowed = {"policy": str, "learn": bool, "exempt": bool}
    if not allow_exempt:
        allowed.pop("exempt")
    unknown = set(data) - set(allowed)
    if unknown:
        raise BadRequest(f"unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    for name, value in data.items():
        if not isinstance(value, allowed[name]):
            raise BadRequest(f"'{name}' must be a {allowed[name].__name__}")
    if not data:
        raise BadRequest("nothing to change")
    return data


@blueprint.patch("/v1/anomalies/<entry_id>")
def update_anomaly(entry_id: str) -> Any:
    actor = require_admin()
    changes = _changes(body(), allow_exempt=True)
    state().service.entries.get(store.entry_of(entry_id))  # 404 for an unknown entry
    updated = store.set_policy(state().service.database, entry_id, actor, **changes)
    return jsonify(store.describe(updated, _settings()))


@blueprint.patch("/v1/anomaly-policy")
def update_default() -> Any:
    actor = require_admin()
    changes = _changes(body(), allow_exempt=False)
    updated = store.set_policy(state().service.database, None, actor, **changes)
    return jsonify({"policy": updated.policy or _settings().policy, "learn": not updated.frozen})
