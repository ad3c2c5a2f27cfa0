"""Errors of the CA layer, one branch of the tree rooted at :class:`IdmintError`.

All of the CA's error classes live here, grouped by the part of ca/ that
raises them (the modules named in each group still re-export theirs), so a
reader sees the whole branch at once and ca/api/problems.py maps each class
to an HTTP status. Texts name the input that was wrong and hint at the fix.
"""

from __future__ import annotations

from idmint.errors import IdmintError


class CAError(IdmintError):
    """The CA refused or failed an operation."""

    code = "ca-error"


class AlreadyInitialized(CAError):
    """The data directory already holds a trust domain."""

    code = "already-initialized"


# spiffe_id.py


class InvalidSpiffeID(CAError):
    """A SPIFFE ID or trust domain does not follow the SPIFFE ID specification."""

    code = "invalid-spiffe-id"


# x509/: csr.py, x509svid.py


class InvalidCSR(CAError):
    """The certificate signing request is malformed or asks for what it may not."""

    code = "invalid-csr"


class InvalidValidity(CAError):
    """The validity window asked of a certificate is impossible or outlives its issuer."""

    code = "invalid-validity"


# jose/jwtsvid.py


class InvalidJWTSVID(CAError):
    """A JWT-SVID (or the bundle keys to check it) is malformed, expired or not trusted."""

    code = "invalid-jwt-svid"


# authority/: authorities.py, rotation.py


class AuthorityNotFound(CAError):
    """No authority of the requested kind and state exists."""

    code = "authority-not-found"


class AuthorityConflict(CAError):
    """Another replica changed the authorities at the same moment."""

    code = "authority-conflict"


class UnsupportedAlgorithm(CAError):
    """The signature algorithm asked for an authority is not one the CA offers."""

    code = "unsupported-algorithm"


class InvalidTransition(CAError):
    """This authority cannot make that transition from its current state."""

    code = "invalid-transition"


# issuance/: entries.py, issuer.py


class InvalidEntry(CAError):
    """A registration entry's fields are invalid."""

    code = "invalid-entry"


class DuplicateEntry(CAError):
    """An entry with the same SPIFFE ID, selectors, parent and node selectors exists."""

    code = "duplicate-entry"


class EntryNotFound(CAError):
    """No entry has this id."""

    code = "entry-not-found"


class NoMatchingEntry(CAError):
    """The workload's selectors match no usable entry."""

    code = "no-matching-entry"


class AmbiguousEntry(CAError):
    """Several SPIFFE IDs match and the request did not say which one."""

    code = "ambiguous-entry"


class AudienceNotAllowed(CAError):
    """The entry does not allow a requested JWT audience."""

    code = "audience-not-allowed"


# revocation/revocations.py


class CredentialNotFound(CAError):
    """No credential with this serial or jti was issued here (or it expired)."""

    code = "credential-not-found"


class InvalidSerial(CAError):
    """An X509-SVID serial number must be hexadecimal."""

    code = "invalid-serial"


class AlreadyRevoked(CAError):
    """The credential is already revoked."""

    code = "already-revoked"


class InvalidRevocationReason(CAError):
    """The revocation reason is not one of the RFC 5280 reasons the CA records."""

    code = "invalid-revocation-reason"


# revocation/crl.py


class CRLBuildError(CAError):
    """The CRL could not be built for this authority's key (a CA fault, not the caller's)."""

    code = "crl-build-failed"


# storage/: ledgers.py, writer.py, audit.py


class JoinTokenNotFound(CAError):
    """No join token has this id."""

    code = "join-token-not-found"


class WriterUnavailable(CAError):
    """The server's database writer cannot be reached or cannot write; retry shortly."""

    code = "writer-unavailable"


class DatabaseBusy(CAError):
    """The database did not answer in time (locked by another process?); retry shortly."""

    code = "database-busy"


class AuditChainBroken(CAError):
    """``audit verify`` found the chain altered."""

    code = "audit-chain-broken"


# api/: auth.py, limits.py, bundle.py, svid.py


class Unauthenticated(CAError):
    """The admin API needs an admin identity."""

    code = "unauthenticated"


class Forbidden(CAError):
    """The caller is authenticated but not an admin."""

    code = "forbidden"


class RateLimited(CAError):
    """Too many requests; retry after the time in Retry-After."""

    code = "rate-limited"

    def __init__(self, level: str, rule: str, key: str, retry_after: int) -> None:
        super().__init__(
            f"rate limit {rule} per {level.replace('_', ' ')} exceeded for {key}; "
            f"retry in {retry_after} s"
        )
        #: The level (address, identity, trust_domain, attestation) and rule that tripped.
        self.level, self.rule, self.retry_after = level, rule, retry_after


class RateLimitStoreUnavailable(CAError):
    """The shared rate-limit store does not answer and this server refuses meanwhile."""

    code = "rate-limit-store-unavailable"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "the rate-limit store does not answer and [limits] on_storage_error is "
            f"'closed'; retry in {retry_after} s"
        )
        self.retry_after = retry_after


class AgentNotFound(CAError):
    """No agent has this SPIFFE ID."""

    code = "agent-not-found"


class AgentForbidden(CAError):
    """The agent is banned, or asked for something that is not its to serve."""

    code = "agent-forbidden"


class InvalidQuery(CAError):
    """A query parameter of this request is not one this endpoint takes."""

    code = "invalid-query"


class BadRequest(CAError):
    """The request body is not what this endpoint takes."""

    code = "bad-request"
