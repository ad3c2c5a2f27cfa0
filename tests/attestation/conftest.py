"""The real server of tests/server, for the attestation tests that go through HTTP."""

from tests.server.conftest import server

__all__ = ["server"]
