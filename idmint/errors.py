"""The root of idmint's one error tree.

Every layer (``hsm``, ``ca``, ``attestation``, ``cli``) raises subclasses of
:class:`IdmintError`, so callers can catch one type and the HTTP layer can map
each branch to a problem document. Error texts name the input that was wrong
and hint at the fix; they never contain secrets (PINs, private keys, tokens).
"""

from __future__ import annotations


class IdmintError(Exception):
    """Base class of every error idmint raises on purpose."""

    #: Short machine-readable code, used for problem-document type URIs.
    code: str = "idmint-error"


class ConfigError(IdmintError):
    """The configuration (file, environment or options) is invalid."""

    code = "config-error"


class ClientError(IdmintError):
    """A client of the CA (the CLI, the workload client) cannot get what it asked for.

    Raised on the client side only, about a server's answer or the local
    environment; the server never raises these, so they have no HTTP status
    of their own.
    """

    code = "client-error"
