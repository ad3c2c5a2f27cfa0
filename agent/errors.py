"""Errors of the node agent.

The agent is the server's client: its errors are about the server's answers
and are never served over HTTP (the Workload API answers with gRPC status
codes, see :mod:`idmint.agent.workload_api`), hence ClientError.
"""

from __future__ import annotations

from idmint.errors import ClientError


class AgentError(ClientError):
    """The agent could not do what it was asked."""

    code = "agent-error"


class ServerUnreachable(AgentError):
    """The idmint server did not answer (network, TLS, or it is down)."""

    code = "server-unreachable"


class ServerRefused(AgentError):
    """The idmint server answered with an error (the detail says which)."""

    code = "server-refused"

    def __init__(self, message: str, status: int, problem: str = "") -> None:
        super().__init__(message)
        self.status = status
        #: The last part of the problem's ``type`` URI, e.g. ``step-up-required``.
        self.problem = problem
