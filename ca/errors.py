"""Errors of the CA layer (authorities, issuance, storage)."""

from __future__ import annotations

from idmint.errors import IdmintError


class CAError(IdmintError):
    """The CA refused or failed an operation."""

    code = "ca-error"


class AlreadyInitialized(CAError):
    """The data directory already holds a trust domain."""

    code = "already-initialized"
