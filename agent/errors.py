"""Errors of the node agent."""

from __future__ import annotations

from idmint.errors import IdmintError


class AgentError(IdmintError):
    """The agent could not do what it was asked."""

    code = "agent-error"


class ServerUnreachable(AgentError):
    """The idmint server did not answer (network, TLS, or it is down)."""

    code = "server-unreachable"


class ServerRefused(AgentError):
    """The idmint server answered with an error (the detail says which)."""

    code = "server-refused"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
