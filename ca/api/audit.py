"""``/v1/audit``: signed checkpoints of the audit log and the keys that verify them.

Public, like the bundle: a checkpoint reveals only a sequence number and a
hash, and its point is to be copied outside the database by anyone. The
keys are a JWKS of their own, never part of the SPIFFE bundle (bundle
consumers must not trust them for SVIDs). ca/authority/checkpoints.py
describes the format.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from idmint.ca.api.context import state
from idmint.ca.api.limits import limit_address
from idmint.ca.authority import checkpoints

blueprint = Blueprint("audit", __name__)


@blueprint.get("/v1/audit/checkpoints")
def latest_checkpoint() -> Any:
    """The newest signed checkpoint."""
    limit_address()
    return jsonify(checkpoints.latest(state().service.database).to_json())


@blueprint.get("/v1/audit/checkpoints/<int:number>")
def checkpoint(number: int) -> Any:
    """Checkpoint ``number`` (they are numbered from 1 in the order they were signed)."""
    limit_address()
    return jsonify(checkpoints.by_number(state().service.database, number).to_json())


@blueprint.get("/v1/audit/keys")
def keys() -> Any:
    """The audit keys (prepared, active, retired) as a JWKS."""
    limit_address()
    return jsonify(checkpoints.audit_jwks(state().service.database))
