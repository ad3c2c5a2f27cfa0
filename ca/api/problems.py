"""Errors as RFC 9457 problem documents.

One table maps each error CLASS to its HTTP status and problem ``type`` URI;
an error takes the entry of the nearest class in its MRO, so a new subclass
is never served as something its base is not. Every class of the tree has
its own entry (tests/ca/test_problems.py checks it), so nothing falls
through to a default. The ``detail`` is the error's own message, which
names the input and never carries secrets.

The split is the one RFC 9110 draws: the caller's input or rights -> 4xx;
our own faults -> 5xx, 503 where retrying later can help (the HSM, the
database writer, an issuer's JWKS), 500 where it is a bug or a broken
configuration (the bare CAError and IdmintError bases included).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Response, jsonify
from werkzeug.exceptions import HTTPException

from idmint.attestation import errors as attestation
from idmint.ca import errors as ca
from idmint.ca.anomaly import errors as anomaly_errors
from idmint.ca.anomaly import store as anomaly_store
from idmint.ca.authority import checkpoints
from idmint.ca.server.errors import ServerError
from idmint.errors import ClientError, ConfigError, IdmintError
from idmint.hsm import errors as hsm

TYPE_BASE = "https://idmint.dev/problems/"
log = logging.getLogger("idmint.api")


@dataclass(frozen=True)
class Problem:
    """How one error class is served: HTTP status and problem type URI."""

    status: int
    type: str


def _p(status: int, name: str) -> Problem:
    return Problem(status, TYPE_BASE + name)


#: Error class -> problem. The client side's errors (ClientError: the CLI,
#: the workload client) are raised about a server's answer, never by the
#: server; their one entry says that one reaching a handler is our bug.
PROBLEMS: dict[type[IdmintError], Problem] = {
    IdmintError: _p(500, "idmint-error"),
    ConfigError: _p(500, "config-error"),
    ClientError: _p(500, "client-error"),
    # attestation/
    attestation.AttestationError: _p(500, "attestation-error"),
    attestation.AttestationFailed: _p(401, "attestation-failed"),
    attestation.EvidenceReplayed: _p(401, "evidence-replayed"),
    attestation.AttestationUnavailable: _p(503, "attestation-unavailable"),
    attestation.CallerGone: _p(401, "caller-gone"),
    # hsm/: the token is the server's, never the caller's fault.
    hsm.HSMError: _p(503, "hsm-error"),
    hsm.ModuleNotFound: _p(503, "hsm-module-not-found"),
    hsm.TokenNotFound: _p(503, "hsm-token-not-found"),
    hsm.PinError: _p(503, "hsm-pin"),
    hsm.KeyNotFound: _p(503, "hsm-key-not-found"),
    hsm.KeyExists: _p(500, "hsm-key-exists"),
    hsm.UnsupportedMechanism: _p(500, "hsm-unsupported-mechanism"),
    hsm.SessionLost: _p(503, "hsm-session-lost"),
    hsm.SigningFailed: _p(503, "hsm-signing-failed"),
    hsm.InvalidURI: _p(500, "hsm-invalid-uri"),
    hsm.CryptokiError: _p(503, "hsm-cryptoki"),
    # ca/
    ca.CAError: _p(500, "ca-error"),
    ca.AlreadyInitialized: _p(409, "already-initialized"),
    ca.InvalidSpiffeID: _p(400, "invalid-spiffe-id"),
    ca.InvalidCSR: _p(400, "invalid-csr"),
    ca.InvalidValidity: _p(400, "invalid-validity"),
    ca.InvalidJWTSVID: _p(401, "invalid-jwt-svid"),
    ca.AuthorityNotFound: _p(503, "authority-not-found"),
    ca.AuthorityConflict: _p(409, "authority-conflict"),
    ca.UnsupportedAlgorithm: _p(400, "unsupported-algorithm"),
    ca.InvalidTransition: _p(409, "invalid-transition"),
    ca.InvalidEntry: _p(400, "invalid-entry"),
    ca.DuplicateEntry: _p(409, "duplicate-entry"),
    ca.EntryNotFound: _p(404, "entry-not-found"),
    ca.NoMatchingEntry: _p(403, "no-matching-entry"),
    ca.AmbiguousEntry: _p(409, "ambiguous-entry"),
    ca.AudienceNotAllowed: _p(403, "audience-not-allowed"),
    ca.CredentialNotFound: _p(404, "credential-not-found"),
    ca.InvalidSerial: _p(400, "invalid-serial"),
    ca.AlreadyRevoked: _p(409, "already-revoked"),
    ca.InvalidRevocationReason: _p(400, "invalid-revocation-reason"),
    ca.CRLBuildError: _p(500, "crl-build-failed"),
    ca.JoinTokenNotFound: _p(404, "join-token-not-found"),
    ca.WriterUnavailable: _p(503, "writer-unavailable"),
    ca.DatabaseBusy: _p(503, "database-busy"),
    ca.AuditChainBroken: _p(500, "audit-chain-broken"),
    ca.Unauthenticated: _p(401, "unauthenticated"),
    ca.Forbidden: _p(403, "forbidden"),
    ca.RateLimited: _p(429, "rate-limited"),
    ca.RateLimitStoreUnavailable: _p(503, "rate-limit-store-unavailable"),
    # ca/anomaly/ and audit checkpoints (issue 15)
    anomaly_errors.AnomalyThrottled: _p(429, "anomaly-throttled"),
    anomaly_errors.StepUpRequired: _p(401, "step-up-required"),
    anomaly_errors.AnomalyDenied: _p(403, "anomaly-denied"),
    anomaly_store.BaselineNotFound: _p(404, "anomaly-baseline-not-found"),
    checkpoints.CheckpointInvalid: _p(400, "audit-checkpoint-invalid"),
    checkpoints.CheckpointNotFound: _p(404, "audit-checkpoint-not-found"),
    ca.AgentNotFound: _p(404, "agent-not-found"),
    ca.AgentForbidden: _p(403, "agent-forbidden"),
    ca.InvalidQuery: _p(400, "invalid-query"),
    ca.BadRequest: _p(400, "bad-request"),
    ServerError: _p(500, "server-error"),
}


def problem_for(error_class: type[IdmintError]) -> Problem:
    """The entry of the nearest class in ``error_class``'s MRO."""
    for cls in error_class.__mro__:
        found = PROBLEMS.get(cls)
        if found is not None:
            return found
    raise AssertionError(f"{error_class!r} is not an IdmintError")  # pragma: no cover


def problem(status: int, title: str, detail: str, type_uri: str, **extra: Any) -> Response:
    body = {"type": type_uri, "title": title, "status": status, "detail": detail, **extra}
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def from_error(error: IdmintError) -> Response:
    found = problem_for(type(error))
    if found.status >= 500:
        # Our fault, so the operator hears of it; 4xx are the caller's and
        # are in the audit log where they matter.
        log.error("%s %s: %s", found.status, type(error).__name__, error)
    title = type(error).__doc__ or type(error).__name__
    return problem(found.status, title.strip().splitlines()[0], str(error), found.type)


def from_http(error: HTTPException) -> Response:
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "-")
    return problem(status, error.name or "Error", error.description or "", TYPE_BASE + code)
