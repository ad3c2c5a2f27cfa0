"""Attestation: evidence in, verified selectors out.

Attestors register under a type string (as ACME challenges do) and depend on
nothing of idmint's but the root of the error tree. What needs the database
(join tokens, replay records) is reached through small protocols the CA
implements.
"""

from idmint.attestation.base import (
    Attested,
    Attestor,
    attestor_types,
    get_attestor_class,
    register,
)
from idmint.attestation.errors import (
    AttestationError,
    AttestationFailed,
    AttestationUnavailable,
    EvidenceReplayed,
)

__all__ = [
    "AttestationError",
    "AttestationFailed",
    "AttestationUnavailable",
    "Attested",
    "Attestor",
    "EvidenceReplayed",
    "attestor_types",
    "get_attestor_class",
    "register",
]
