"""Errors of the attestors: the evidence proved nothing, or could not be checked.

The distinction matters to the caller: :class:`AttestationFailed` is the
caller's evidence (HTTP 401, try other evidence), :class:`AttestationUnavailable`
is ours (HTTP 503, the same evidence may pass once the issuer's keys can be
read again).
"""

from __future__ import annotations

from idmint.errors import IdmintError


class AttestationError(IdmintError):
    """Attestation could not be completed."""

    code = "attestation-error"


class AttestationFailed(AttestationError):
    """The evidence did not prove anything: bad signature, expired, wrong audience..."""

    code = "attestation-failed"


class EvidenceReplayed(AttestationFailed):
    """This evidence was already used; each piece is good once."""

    code = "evidence-replayed"


class CallerGone(AttestationFailed):
    """The calling process exited or is not the one that connected (PID reuse)."""

    code = "caller-gone"


class AttestationUnavailable(AttestationError):
    """A source the attestor trusts (an issuer's discovery document or JWKS) cannot be read."""

    code = "attestation-unavailable"
