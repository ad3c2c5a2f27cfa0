"""The server's agent API over real HTTPS: attestation, sync, batch signing, bans.

Judged by what the server does (status codes, what it recorded in its
database) and by cryptography's X.509 verifier.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store
from sqlalchemy import func, select

from idmint.ca.config import load
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import IssuedCredential
from idmint.pop import make_proof
from tests.agent.conftest import TRUST_DOMAIN, agent_token, parented_entry
from tests.server.conftest import Server, csr_pem


@dataclass
class AgentIdentity:
    """An agent SVID held by the test, and calls signed with it."""

    server: Server
    spiffe_id: str
    chain_pem: str
    key: Any

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        proof = make_proof(
            self.chain_pem, self.key, "agent", f"{method} {path}\n".encode() + payload
        )
        sent = {"X-Idmint-Agent-Proof": base64.b64encode(json.dumps(proof).encode()).decode()}
        return self.server.request(
            method,
            path,
            raw=payload if body is not None else None,
            headers={**sent, **(headers or {})},
        )


def attest(server: Server) -> AgentIdentity:
    token = agent_token(server)
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = server.request(
        "POST",
        "/v1/agent/attest",
        {"attestation": {"type": "join_token", "token": token["token"]}, "csr": csr_pem(key)},
    )
    assert status == 201, body
    assert body["agent_id"] == body["spiffe_id"] == token["spiffe_id"]
    return AgentIdentity(server, body["spiffe_id"], body["chain_pem"], key)


def _count(server: Server) -> int:
    database = Database(load(server.data_dir).database_url)
    try:
        with database.reading() as session:
            return int(session.scalar(select(func.count(IssuedCredential.id))) or 0)
    finally:
        database.close()


def issued_count(server: Server) -> int:
    """Credentials recorded, once the server's writer has caught up (it commits within 20 ms)."""
    last = _count(server)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = _count(server)
        if now == last:
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def pair(server: Server) -> tuple[AgentIdentity, AgentIdentity]:
    return attest(server), attest(server)


def _roots(server: Server) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(server.request("GET", "/v1/bundle?format=pem")[2])


def test_agent_svid_is_an_svid_for_its_agent_id(server: Server) -> None:
    agent = attest(server)
    assert agent.spiffe_id.startswith(f"spiffe://{TRUST_DOMAIN}/idmint/agent/join_token/")
    leaf, *rest = x509.load_pem_x509_certificates(agent.chain_pem.encode())
    verified = (
        PolicyBuilder().store(Store(_roots(server))).build_client_verifier().verify(leaf, rest)
    )
    assert [str(s.value) for s in verified.subjects or []] == [agent.spiffe_id]
    listed = server.admin("GET", "/v1/agents")
    assert agent.spiffe_id in [a["spiffe_id"] for a in listed]


def test_a_workload_join_token_does_not_make_an_agent(server: Server) -> None:
    server.entry(f"spiffe://{TRUST_DOMAIN}/plain", ["join_token:any:true"])
    token = server.join_token(f"spiffe://{TRUST_DOMAIN}/plain")
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = server.request(
        "POST",
        "/v1/agent/attest",
        {"attestation": {"type": "join_token", "token": token}, "csr": csr_pem(key)},
    )
    assert status == 401, body
    assert "token create --agent" in body["detail"]


def test_an_agent_token_is_good_once(server: Server) -> None:
    token = agent_token(server)
    evidence = {"attestation": {"type": "join_token", "token": token["token"]}}
    key = ec.generate_private_key(ec.SECP256R1())
    first = server.request("POST", "/v1/agent/attest", {**evidence, "csr": csr_pem(key)})
    again = server.request("POST", "/v1/agent/attest", {**evidence, "csr": csr_pem(key)})
    assert first[0] == 201
    assert again[0] == 401


def test_sync_lists_only_its_entries_and_is_cheap_when_unchanged(
    server: Server, pair: tuple[AgentIdentity, AgentIdentity]
) -> None:
    mine, other = pair
    a = parented_entry(server, mine.spiffe_id, "sync/a", ["unix:uid:10"])
    parented_entry(server, other.spiffe_id, "sync/b", ["unix:uid:10"])
    server.entry(f"spiffe://{TRUST_DOMAIN}/sync/direct", ["join_token:any:true"])
    status, headers, document = mine.call("GET", "/v1/agent/entries")
    assert status == 200
    assert [e["id"] for e in document["entries"]] == [a["id"]]
    assert headers["etag"] == f'"{document["revision"]}"'
    assert document["bundle_pem"] == server.request("GET", "/v1/bundle?format=pem")[2].decode()
    status, again, body = mine.call(
        "GET", "/v1/agent/entries", headers={"If-None-Match": headers["etag"]}
    )
    assert (status, body) == (304, b"")
    assert again["etag"] == headers["etag"]
    parented_entry(server, mine.spiffe_id, "sync/c", ["unix:uid:11"])
    status, changed, document = mine.call(
        "GET", "/v1/agent/entries", headers={"If-None-Match": headers["etag"]}
    )
    assert status == 200 and changed["etag"] != headers["etag"]
    assert len(document["entries"]) == 2


def test_batch_signs_one_svid_per_csr(
    server: Server, pair: tuple[AgentIdentity, AgentIdentity]
) -> None:
    mine, _ = pair
    one = parented_entry(server, mine.spiffe_id, "batch/one", ["unix:uid:20"])
    two = parented_entry(server, mine.spiffe_id, "batch/two", ["unix:uid:21"])
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    before = issued_count(server)
    status, _, body = mine.call(
        "POST",
        "/v1/agent/x509",
        {
            "requests": [
                {"entry_id": one["id"], "csr": csr_pem(keys[0])},
                {"entry_id": two["id"], "csr": csr_pem(keys[1])},
                {"entry_id": one["id"], "csr": csr_pem(keys[2])},
            ]
        },
    )
    assert status == 201, body
    assert issued_count(server) == before + 3
    verifier = PolicyBuilder().store(Store(_roots(server))).build_client_verifier()
    got = []
    for svid, key in zip(body["svids"], keys, strict=True):
        leaf, *rest = x509.load_pem_x509_certificates(svid["chain_pem"].encode())
        assert leaf.public_key() == key.public_key()
        got.append(str(verifier.verify(leaf, rest).subjects[0].value))  # type: ignore[index]
    assert got == [one["spiffe_id"], two["spiffe_id"], one["spiffe_id"]]


def test_another_agents_entry_is_403_and_nothing_is_issued(
    server: Server, pair: tuple[AgentIdentity, AgentIdentity]
) -> None:
    mine, other = pair
    own = parented_entry(server, mine.spiffe_id, "steal/own", ["unix:uid:30"])
    theirs = parented_entry(server, other.spiffe_id, "steal/theirs", ["unix:uid:30"])
    direct = server.entry(f"spiffe://{TRUST_DOMAIN}/steal/direct", ["unix:uid:30"])
    before = issued_count(server)
    for target in (theirs, direct):
        status, _, body = mine.call(
            "POST",
            "/v1/agent/x509",
            {
                "requests": [
                    {
                        "entry_id": own["id"],
                        "csr": csr_pem(ec.generate_private_key(ec.SECP256R1())),
                    },
                    {
                        "entry_id": target["id"],
                        "csr": csr_pem(ec.generate_private_key(ec.SECP256R1())),
                    },
                ]
            },
        )
        assert status == 403, body
        assert target["id"] in body["detail"]
        status, _, body = mine.call(
            "POST", "/v1/agent/jwt", {"entry_id": target["id"], "audience": "x"}
        )
        assert status == 403, body
    assert issued_count(server) == before


def test_jwt_for_its_entry(server: Server, pair: tuple[AgentIdentity, AgentIdentity]) -> None:
    mine, _ = pair
    entry = parented_entry(server, mine.spiffe_id, "jwt/one", ["unix:uid:40"], audiences=["db"])
    status, _, body = mine.call(
        "POST", "/v1/agent/jwt", {"entry_id": entry["id"], "audience": "db"}
    )
    assert status == 201, body
    assert body["spiffe_id"] == entry["spiffe_id"]
    status, _, body = mine.call(
        "POST", "/v1/agent/jwt", {"entry_id": entry["id"], "audience": "no"}
    )
    assert status == 403, body


def test_parented_entries_are_not_issued_directly(
    server: Server, pair: tuple[AgentIdentity, AgentIdentity]
) -> None:
    mine, _ = pair
    entry = parented_entry(
        server, mine.spiffe_id, "only-through-agent", ["join_token:any:true", "unix:uid:50"]
    )
    token = server.join_token(entry["spiffe_id"])
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = server.request(
        "POST",
        "/v1/svid/x509",
        {"attestation": {"type": "join_token", "token": token}, "csr": csr_pem(key)},
    )
    assert status == 403, body
    # Nor renewed by proof of an agent-issued SVID, bypassing the agent (and its ban).
    status, _, issued = mine.call(
        "POST", "/v1/agent/x509", {"requests": [{"entry_id": entry["id"], "csr": csr_pem(key)}]}
    )
    assert status == 201
    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_pem(new_key)
    proof = make_proof(issued["svids"][0]["chain_pem"], key, "x509-renew", csr.encode())
    status, _, body = server.request("POST", "/v1/svid/x509/renew", {"csr": csr, "proof": proof})
    assert status == 403, body


def test_an_unauthenticated_or_forged_call_is_refused(
    server: Server, pair: tuple[AgentIdentity, AgentIdentity]
) -> None:
    assert server.request("GET", "/v1/agent/entries")[0] == 401
    mine, _ = pair
    impostor = AgentIdentity(
        server, mine.spiffe_id, mine.chain_pem, ec.generate_private_key(ec.SECP256R1())
    )
    assert impostor.call("GET", "/v1/agent/entries")[0] == 401


def test_a_banned_agent_gets_nothing_more(server: Server) -> None:
    agent = attest(server)
    entry = parented_entry(server, agent.spiffe_id, "banned/one", ["unix:uid:60"])
    assert agent.call("GET", "/v1/agent/entries")[0] == 200
    banned = server.admin("POST", "/v1/agents/ban", {"spiffe_id": agent.spiffe_id})
    assert banned["banned"] is True
    before = issued_count(server)
    key = ec.generate_private_key(ec.SECP256R1())
    assert agent.call("GET", "/v1/agent/entries")[0] == 403
    status, _, body = agent.call(
        "POST", "/v1/agent/x509", {"requests": [{"entry_id": entry["id"], "csr": csr_pem(key)}]}
    )
    assert status == 403 and "banned" in body["detail"]
    assert agent.call("POST", "/v1/agent/renew", {"csr": csr_pem(key)})[0] == 403
    # Its SVID cannot renew itself through the workload path either: its entry is
    # disabled, which every worker sees within the issuer's cache time (1 s).
    time.sleep(1.5)
    csr = csr_pem(key)
    proof = make_proof(agent.chain_pem, agent.key, "x509-renew", csr.encode())
    status, _, body = server.request("POST", "/v1/svid/x509/renew", {"csr": csr, "proof": proof})
    assert status == 403, body
    assert issued_count(server) == before
    shown = server.admin("GET", f"/v1/agents?spiffe_id={agent.spiffe_id}")
    assert shown["banned"] is True


def test_agent_renews_by_proof(server: Server) -> None:
    agent = attest(server)
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = agent.call("POST", "/v1/agent/renew", {"csr": csr_pem(key)})
    assert status == 201, body
    assert body["spiffe_id"] == agent.spiffe_id
    leaf = x509.load_pem_x509_certificates(body["chain_pem"].encode())[0]
    assert leaf.public_key() == key.public_key()
