"""Errors of the server process."""

from __future__ import annotations

from idmint.ca.errors import CAError


class ServerError(CAError):
    """The server cannot start or keep running as configured."""

    code = "server-error"
