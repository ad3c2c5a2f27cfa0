"""Attestation: evidence in, verified selectors out.

Attestors register under a type string (as ACME challenges do) and depend on
nothing of idmint's but the root of the error tree. What needs the database
(join tokens, replay records) is reached through small protocols the CA
implements.
"""

from idmint.attestation.base import (
    AttestationFailed,
    Attested,
    Attestor,
    EvidenceReplayed,
    attestor_types,
    get_attestor_class,
    register,
)

__all__ = [
    "AttestationFailed",
    "Attested",
    "Attestor",
    "EvidenceReplayed",
    "attestor_types",
    "get_attestor_class",
    "register",
]
