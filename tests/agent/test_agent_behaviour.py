"""A running agent follows the server: entry changes, taint, root rotation,
renewal, outages and bans, as py-spiffe's clients and sources see them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from spiffe import JwtSource, WorkloadApiClient, X509Source
from spiffe.spiffe_id.spiffe_id import TrustDomain

from idmint.ca.issuance.pop import issuer_kid
from tests.agent.conftest import (
    OTHER_UID,
    TRUST_DOMAIN,
    AgentProcess,
    eventually,
    parented_entry,
    restart_server,
    run_as,
    start_agent,
    stop_server,
)
from tests.server.conftest import Server

ME = f"spiffe://{TRUST_DOMAIN}/me"


@pytest.fixture(scope="module")
def me(server: Server, agent: AgentProcess) -> dict[str, Any]:
    made = parented_entry(server, agent.spiffe_id, "me", ["unix:uid:0"], audiences=["peer"])
    agent.wait_ready(svids=1)
    return made


@pytest.fixture
def client(agent: AgentProcess, me: dict[str, Any]) -> Iterator[Any]:
    made = WorkloadApiClient(socket_path=agent.address, default_timeout=20)
    yield made
    made.close()


def _ids(client: Any) -> list[str]:
    return sorted(str(s.spiffe_id) for s in client.fetch_x509_svids())


def test_entry_created_and_deleted_reach_the_agent_within_5s(
    server: Server, agent: AgentProcess, client: Any
) -> None:
    extra = parented_entry(server, agent.spiffe_id, "me/extra", ["unix:uid:0", "unix:gid:0"])
    eventually(lambda: _ids(client) == sorted([ME, extra["spiffe_id"]]))
    server.admin("DELETE", f"/v1/entries/{extra['id']}")
    eventually(lambda: _ids(client) == [ME])


def test_jwt_source_validates_a_jwt_svid_of_another_workload(
    server: Server, agent: AgentProcess, me: dict[str, Any]
) -> None:
    parented_entry(server, agent.spiffe_id, "peer", [f"unix:uid:{OTHER_UID}"])
    agent.wait_ready(svids=2)
    got = run_as(
        OTHER_UID,
        """
        import json
        from spiffe import WorkloadApiClient
        print(json.dumps({"token": WorkloadApiClient(default_timeout=20)
                          .fetch_jwt_svid(audience={"me"}).token}))
        """,
        agent.socket,
    )
    source = JwtSource(socket_path=agent.address, timeout_in_seconds=20)
    try:
        from spiffe import JwtSvid

        bundle = source.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
        assert bundle is not None
        svid = JwtSvid.parse_and_validate(got["token"], bundle, {"me"})
        assert str(svid.spiffe_id) == f"spiffe://{TRUST_DOMAIN}/peer"
    finally:
        source.close()


def test_a_revoked_jwt_svid_no_longer_validates(server: Server, client: Any) -> None:
    svid = client.fetch_jwt_svid(audience={"peer"})
    assert client.validate_jwt_svid(svid.token, "peer")
    import jwt

    jti = jwt.decode(svid.token, options={"verify_signature": False})["jti"]
    server.admin("POST", "/v1/revocations", {"kind": "jwt", "jti": jti, "reason": "keyCompromise"})

    def refused() -> bool:
        try:
            client.validate_jwt_svid(svid.token, "peer")
        except Exception as error:
            return "revoked" in str(error)
        return False

    eventually(refused)


def test_taint_makes_the_agent_resign_at_once(
    server: Server, agent: AgentProcess, client: Any
) -> None:
    before = client.fetch_x509_svid()
    old_issuer = issuer_kid(before.leaf)
    source = X509Source(socket_path=agent.address, timeout_in_seconds=20)
    try:
        server.authority("taint", "intermediate")
        changed = eventually(
            lambda: (
                (svid := source.get_x509_context().default_svid)
                and issuer_kid(svid.leaf) != old_issuer
                and svid
            ),
            timeout=10,
        )
        assert str(changed.spiffe_id) == ME
        # Without new node evidence: the agent renewed its own SVID off the tainted key.
        assert agent.health()[1]["server_reachable"] is True
    finally:
        source.close()


def test_x509_source_sees_a_new_root_after_rotation(
    server: Server, agent: AgentProcess, me: dict[str, Any]
) -> None:
    source = X509Source(socket_path=agent.address, timeout_in_seconds=20)
    try:

        def roots() -> set[x509.Certificate]:
            bundle = source.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
            return set(bundle.x509_authorities) if bundle else set()

        before = roots()
        server.authority("prepare", "root")
        grown = eventually(lambda: len(roots()) > len(before) and roots(), timeout=10)
        published = x509.load_pem_x509_certificates(
            server.request("GET", "/v1/bundle?format=pem")[2]
        )
        assert grown == set(published)
    finally:
        source.close()


@pytest.mark.slow
def test_x509_source_sees_a_renewed_svid(
    server: Server, agent: AgentProcess, me: dict[str, Any]
) -> None:
    short = parented_entry(
        server, agent.spiffe_id, "short", ["unix:uid:0", "unix:group:root"], x509_ttl_seconds=60
    )
    agent.wait_ready()

    def pick(svids: list[Any]) -> Any:
        # X509Source keeps one SVID: this one, once the agent has it.
        return next((s for s in svids if str(s.spiffe_id) == short["spiffe_id"]), svids[0])

    source = X509Source(socket_path=agent.address, timeout_in_seconds=20, svid_picker=pick)
    try:

        def short_svid() -> Any:
            svid = source.get_x509_context().default_svid
            return svid if str(svid.spiffe_id) == short["spiffe_id"] else None

        first = eventually(short_svid, timeout=10)
        # Renewed at about half of 60 s, with jitter.
        renewed = eventually(
            lambda: (s := short_svid()) and s.leaf.serial_number != first.leaf.serial_number and s,
            timeout=45,
            interval=0.5,
        )
        assert renewed.leaf.not_valid_after_utc > first.leaf.not_valid_after_utc
    finally:
        source.close()
        server.admin("DELETE", f"/v1/entries/{short['id']}")


@pytest.mark.slow
def test_server_down_cached_svid_served_then_catch_up(
    server: Server, agent: AgentProcess, client: Any, directory: Path
) -> None:
    held = client.fetch_x509_svid()
    logged_before = len(agent.log.read_text())
    stop_server(server)
    try:
        eventually(lambda: agent.health()[1]["server_reachable"] is False, timeout=10)
        # Still served, from the cache.
        assert client.fetch_x509_svid().leaf.serial_number == held.leaf.serial_number
    except Exception:
        restart_server(server, directory / "server-restart.log")
        raise
    restart_server(server, directory / "server-restart.log")
    eventually(lambda: agent.health()[1]["server_reachable"] is True, timeout=40)
    later = parented_entry(server, agent.spiffe_id, "me/later", ["unix:uid:0", "unix:gid:0"])
    eventually(lambda: later["spiffe_id"] in _ids(client), timeout=10)
    server.admin("DELETE", f"/v1/entries/{later['id']}")
    # Logged once for the whole outage, not once per retry.
    assert agent.log.read_text()[logged_before:].count("server unavailable") == 1


@pytest.mark.slow
def test_banned_agent_gets_no_more_svids(server: Server, directory: Path) -> None:
    banned = start_agent(server, directory, name="banned")
    try:
        entry = parented_entry(server, banned.spiffe_id, "banned-workload", ["unix:uid:0"])
        banned.wait_ready(svids=1)
        server.admin("POST", "/v1/agents/ban", {"spiffe_id": banned.spiffe_id})
        started = time.monotonic()
        eventually(lambda: banned.health()[1]["server_reachable"] is False, timeout=5)
        assert time.monotonic() - started < 5
        # A new entry for it never reaches it.
        parented_entry(server, banned.spiffe_id, "banned-later", ["unix:uid:0", "unix:gid:0"])
        time.sleep(3)
        assert banned.health()[1]["entries"] == 1
        assert "banned" in banned.log.read_text()
        del entry
    finally:
        banned.stop()
