"""Admin resources: registration entries and join tokens. Every route needs an admin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, jsonify

from idmint.ca.api.auth import require_admin
from idmint.ca.api.context import state
from idmint.ca.api.svid import BadRequest, body
from idmint.ca.issuance.entries import EntrySpec, selector_warnings

blueprint = Blueprint("admin", __name__)

_SPEC_FIELDS: dict[str, type] = {
    "spiffe_id": str,
    "selectors": list,
    "owner": str,
    "expires_at": str,
    "x509_ttl_seconds": int,
    "jwt_ttl_seconds": int,
    "audiences": list,
    "dns_names": list,
    "admin": bool,
    "disabled": bool,
    "parent_id": str,
    "node_selectors": list,
}


def _spec_changes(data: dict[str, Any]) -> dict[str, Any]:
    """JSON fields -> EntrySpec keyword arguments, each type-checked."""
    unknown = set(data) - set(_SPEC_FIELDS)
    if unknown:
        raise BadRequest(f"unknown entry fields: {sorted(unknown)}")
    changes: dict[str, Any] = {}
    for name, given in data.items():
        kind = _SPEC_FIELDS[name]
        if (isinstance(given, bool) and kind is not bool) or not isinstance(given, kind):
            raise BadRequest(f"'{name}' must be a {kind.__name__}")
        value: Any = given
        if kind is list and not all(isinstance(v, str) for v in value):
            raise BadRequest(f"'{name}' must be a list of strings")
        if name == "expires_at":
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise BadRequest(f"'expires_at' {value!r} is not an ISO 8601 time") from None
            if moment.tzinfo is None:
                raise BadRequest("'expires_at' needs a time zone (e.g. Z)")
            changes["expires_at"] = moment
        elif name in ("x509_ttl_seconds", "jwt_ttl_seconds"):
            if not 0 < value <= 86400:
                raise BadRequest(f"'{name}' {value} is outside 1-86400 seconds")
            changes[name.replace("_seconds", "")] = timedelta(seconds=value)
        else:
            changes[name] = value
    return changes


@blueprint.get("/v1/entries")
def list_entries() -> Any:
    require_admin()
    return jsonify({"entries": [e.to_json() for e in state().service.entries.list()]})


@blueprint.post("/v1/entries")
def create_entry() -> Any:
    actor = require_admin()
    changes = _spec_changes(body())
    missing = {"spiffe_id", "selectors", "owner", "expires_at"} - set(changes)
    if missing:
        raise BadRequest(f"missing entry fields: {sorted(missing)}")
    spec = EntrySpec(**changes)
    view = state().service.entries.create(spec, actor=actor)
    state().service.issuer.invalidate()
    # The attestors this server runs, not the file's: the answer is about this server.
    warnings = selector_warnings(spec, state().attestors)
    return jsonify({**view.to_json(), "warnings": warnings}), 201


@blueprint.get("/v1/entries/<entry_id>")
def get_entry(entry_id: str) -> Any:
    require_admin()
    return jsonify(state().service.entries.get(entry_id).to_json())


@blueprint.patch("/v1/entries/<entry_id>")
def update_entry(entry_id: str) -> Any:
    actor = require_admin()
    changes = _spec_changes(body())
    if not changes:
        raise BadRequest("nothing to change")
    view = state().service.entries.update(entry_id, changes, actor=actor)
    state().service.issuer.invalidate()
    return jsonify(view.to_json())


@blueprint.delete("/v1/entries/<entry_id>")
def delete_entry(entry_id: str) -> Any:
    actor = require_admin()
    state().service.entries.delete(entry_id, actor=actor)
    state().service.issuer.invalidate()
    return "", 204


@blueprint.post("/v1/join-tokens")
def create_token() -> Any:
    actor = require_admin()
    data = body()
    spiffe_id, ttl = data.get("spiffe_id"), data.get("ttl_seconds", 600)
    if not isinstance(spiffe_id, str) or isinstance(ttl, bool) or not isinstance(ttl, int):
        raise BadRequest("'spiffe_id' (string) and 'ttl_seconds' (integer) are required")
    if not 0 < ttl <= 7 * 86400:
        raise BadRequest(f"'ttl_seconds' {ttl} is outside 1-604800 seconds")
    issued = state().tokens.create(spiffe_id, timedelta(seconds=ttl), actor)
    return jsonify(
        {
            "id": issued.id,
            "token": issued.token,
            "spiffe_id": issued.spiffe_id,
            "expires_at": issued.expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
    ), 201


@blueprint.get("/v1/join-tokens")
def list_tokens() -> Any:
    require_admin()
    return jsonify({"join_tokens": [t.to_json() for t in state().tokens.list()]})


@blueprint.delete("/v1/join-tokens/<token_id>")
def revoke_token(token_id: str) -> Any:
    actor = require_admin()
    state().tokens.revoke(token_id, actor)
    return "", 204
