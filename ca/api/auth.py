"""Who may call the admin API.

Two ways in, nothing anonymous:

- the Unix socket in the data directory (mode 0600) from a local process of
  the same user or root, checked with the peer's credentials (SO_PEERCRED);
- a proof of possession of an X509-SVID whose registration entry is marked
  admin, sent as ``X-Idmint-Proof`` (base64 JSON, see :mod:`ca.pop`) over the
  method, path and body of this very request, single use.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import struct
from datetime import UTC, datetime

from flask import request

from idmint.ca.api.context import state
from idmint.ca.api.observe import set_caller
from idmint.ca.errors import Forbidden, Unauthenticated
from idmint.ca.issuance.pop import verify_proof

PROOF_HEADER = "X-Idmint-Proof"


def request_payload() -> bytes:
    """What an admin proof signs: method, path with query, and the body."""
    return f"{request.method} {request.full_path.rstrip('?')}\n".encode() + request.get_data()


def _unix_peer_uid() -> int | None:
    sock = request.environ.get("gunicorn.socket")
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def require_admin() -> str:
    """The admin's identity for the audit log; raise 401/403 otherwise."""
    uid = _unix_peer_uid()
    if uid is not None:
        if uid in (0, os.geteuid()):
            set_caller(f"unix:uid={uid}")
            return f"unix:uid={uid}"
        raise Forbidden(f"local user {uid} may not use the admin socket")
    header = request.headers.get(PROOF_HEADER)
    if not header:
        raise Unauthenticated(
            f"admin operations need an admin SVID proof ({PROOF_HEADER}) or the local admin socket"
        )
    try:
        proof = json.loads(base64.b64decode(header, validate=True))
    except (binascii.Error, ValueError, RecursionError):
        raise Unauthenticated(f"{PROOF_HEADER} is not base64-encoded JSON") from None
    api = state()
    now = datetime.now(UTC)
    issuer = api.service.issuer
    proven = verify_proof(
        proof, "admin", request_payload(), issuer.bundle().roots, now, issuer.is_revoked
    )
    from idmint.ca.api.svid import check_issuers

    check_issuers(issuer, proven)
    api.used.spend([proven.replay_key], now)
    admins = [e for e in issuer.state().entries.for_spiffe_id(proven.spiffe_id) if e.usable(now)]
    set_caller(f"svid:{proven.spiffe_id}")
    if not any(e.admin for e in admins):
        raise Forbidden(f"{proven.spiffe_id} is not an admin identity")
    return f"svid:{proven.spiffe_id}"
