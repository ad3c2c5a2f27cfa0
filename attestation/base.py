"""The attestor interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

# The errors live in attestation/errors.py; importing them from here still works.
from idmint.attestation.errors import AttestationFailed
from idmint.attestation.errors import EvidenceReplayed as EvidenceReplayed


@dataclass(frozen=True)
class Attested:
    """What an attestor proved about the caller."""

    #: Verified selectors, ``type:name:value``.
    selectors: tuple[str, ...]
    #: A short description of who this is, for the audit log (never a secret).
    subject: str
    #: Keys that must be used once only, each with the time after which it
    #: could not be replayed anyway (the evidence's own expiry).
    replay_keys: tuple[tuple[str, datetime], ...] = ()
    #: Set by attestors whose evidence names the SPIFFE ID itself (join tokens).
    spiffe_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class Attestor(ABC):
    """Turns one type of evidence into selectors, or raises AttestationFailed."""

    type: ClassVar[str]
    #: The selector types (the part before the first colon) it produces.
    selector_types: ClassVar[tuple[str, ...]]

    @abstractmethod
    def attest(self, evidence: Mapping[str, Any], now: datetime) -> Attested:
        """Verify ``evidence`` (the request's ``attestation`` object) at ``now``."""


_REGISTRY: dict[str, type[Attestor]] = {}
A = TypeVar("A", bound=type[Attestor])


def register(cls: A) -> A:
    """Class decorator: make an attestor available under its ``type``."""
    if cls.type in _REGISTRY:
        raise ValueError(f"attestor type {cls.type!r} registered twice")
    _REGISTRY[cls.type] = cls
    return cls


def get_attestor_class(kind: str) -> type[Attestor]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise AttestationFailed(
            f"unknown attestation type {kind!r}; this server accepts {sorted(_REGISTRY)}"
        ) from None


def attestor_types() -> list[str]:
    return sorted(_REGISTRY)


def require(evidence: Mapping[str, Any], name: str, kind: type = str) -> Any:
    """A required field of the evidence, of the given type."""
    value = evidence.get(name)
    if not isinstance(value, kind) or (isinstance(value, str) and not value):
        raise AttestationFailed(f"attestation evidence needs {name!r} ({kind.__name__})")
    return value


Now = Callable[[], datetime]
