"""Per-agent anomaly baselines through the real server's agent API (issue 15).

What an agent asks for on its workloads' behalf is judged as the agent's own
behaviour, in a baseline keyed ``agent:<the agent's entry id>``. The agents
here attest with x509pop (fresh node evidence every time, so a step-up can
be answered). The server re-reads baselines at every check (``sync_seconds
= 0``): the week is learned in-process after the agent attested.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from idmint.attestation.x509pop import sign_nonce
from idmint.ca.storage.models import AuditEvent, IssuedCredential
from idmint.cli.admin_client import AdminAPIError
from tests.agent.conftest import parented_entry
from tests.agent.test_agent_api import AgentIdentity, issued_count
from tests.agent.test_node_evidence import _agent, _x509pop_files
from tests.server.conftest import (
    Server,
    _idmint,
    bootstrap_leaf,
    clean_env,
    csr_pem,
    start_attesting_server,
    stop_server,
)
from tests.server.learned import learn_week, server_database, wait_for_second
from tests.server.test_revocation import _fetch_crl, _ocsp_status, _split_chain


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_attesting_server(
        tmp_path_factory.mktemp("agent-anomaly"),
        workers=1,
        extra_config="\n[anomaly]\nsync_seconds = 0\n",
    )
    yield running
    stop_server(running)


class Node:
    """A node holding a bootstrap certificate: it can attest afresh at any time."""

    def __init__(self, server: Server, cn: str) -> None:
        self.server = server
        self.node_key, self.chain = bootstrap_leaf(server.bootstrap_key, server.bootstrap_cert, cn)

    def attest(self) -> tuple[int, Any]:
        status, _, nonce = self.server.request("GET", "/v1/nonce")
        assert status == 200, nonce
        signature = sign_nonce(self.node_key, nonce["nonce"])
        key = ec.generate_private_key(ec.SECP256R1())
        evidence = {
            "type": "x509pop",
            "nonce": nonce["nonce"],
            "chain": self.chain,
            "signature": base64.b64encode(signature).decode(),
        }
        status, _, body = self.server.request(
            "POST", "/v1/agent/attest", {"attestation": evidence, "csr": csr_pem(key)}
        )
        if status == 201:
            self.agent = AgentIdentity(self.server, body["spiffe_id"], body["chain_pem"], key)
        return status, body

    def renew(self) -> tuple[int, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        status, _, body = self.agent.call("POST", "/v1/agent/renew", {"csr": csr_pem(key)})
        if status == 201:
            self.agent = AgentIdentity(self.server, body["spiffe_id"], body["chain_pem"], key)
        return status, body

    def batch(self, entry_ids: list[str]) -> tuple[int, Any]:
        requests = [
            {"entry_id": entry_id, "csr": csr_pem(ec.generate_private_key(ec.SECP256R1()))}
            for entry_id in entry_ids
        ]
        status, _, body = self.agent.call("POST", "/v1/agent/x509", {"requests": requests})
        return status, body

    @property
    def key(self) -> str:
        """The agent's anomaly baseline key."""
        shown = self.server.admin("GET", f"/v1/agents?spiffe_id={self.agent.spiffe_id}")
        return f"agent:{shown['entry_id']}"


def _attested(server: Server, cn: str, entries: int) -> tuple[Node, list[str]]:
    node = Node(server, cn)
    status, body = node.attest()
    assert status == 201, body
    made = [
        parented_entry(server, node.agent.spiffe_id, f"{cn}/w{n}", [f"unix:uid:{2000 + n}"])["id"]
        for n in range(entries)
    ]
    return node, made


def _events(server: Server, spiffe_id: str, prefix: str) -> list[AuditEvent]:
    database = server_database(server)
    try:
        with database.reading() as session:
            return list(
                session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.action.startswith(prefix))
                    .where(AuditEvent.subject == spiffe_id)
                    .order_by(AuditEvent.seq)
                )
            )
    finally:
        database.close()


def _learn(server: Server, node: Node) -> str:
    """A week of one 3-SVID batch every 5 minutes (0.6/min, limit 5.4/min)."""
    key = node.key
    learn_week(
        server,
        {"id": key, "spiffe_id": node.agent.spiffe_id},
        kind="agent-x509",
        count=3,
        by_proof=True,
    )
    return key


@pytest.mark.slow
def test_an_agent_far_above_its_week_is_throttled_stepped_up_or_denied(
    server: Server, tmp_path: Path
) -> None:
    """Two agents in the same two minutes: the default policy (step-up), and deny."""
    stepped, stepped_entries = _attested(server, "node-step", 3)
    denied, denied_entries = _attested(server, "node-deny", 3)
    stepped_key, denied_key = _learn(server, stepped), _learn(server, denied)
    server.admin("PATCH", f"/v1/anomalies/{denied_key}", {"policy": "deny"})
    learned = server.admin("GET", f"/v1/anomalies/{stepped_key}")
    assert learned["action"] is None and 0.5 < learned["rate_per_minute"]["mean"] < 0.7

    wait_for_second(40)
    started = datetime.now(UTC).replace(second=0, microsecond=0)
    # Minute 1: its usual batch passes; a second one (6/min) is throttled, nothing issued.
    for node, entries in ((stepped, stepped_entries), (denied, denied_entries)):
        status, body = node.batch(entries)
        assert status == 201 and len(body["svids"]) == 3, body
        before = issued_count(server)
        status, body = node.batch(entries)
        assert status == 429 and body["type"].endswith("/anomaly-throttled"), body
        assert "rate 6/min vs baseline 0.6/min" in body["detail"], body["detail"]
        assert issued_count(server) == before
    assert datetime.now(UTC) < started + timedelta(minutes=1), "the first minute ran over"

    # Minute 2: past the limit again while throttled.
    time.sleep(
        max(0.0, (started + timedelta(minutes=1, seconds=1) - datetime.now(UTC)).total_seconds())
    )
    for node, entries in ((stepped, stepped_entries), (denied, denied_entries)):
        status, body = node.batch(entries)
        assert status == 201, body
    status, body = stepped.batch(stepped_entries)
    assert status == 401 and body["type"].endswith("/step-up-required"), body
    assert "again after being throttled" in body["detail"], body["detail"]
    # Renewing its SVID by proof is not attesting afresh: still refused.
    status, body = stepped.renew()
    assert status == 201, body
    status, body = stepped.batch(stepped_entries)
    assert status == 401 and body["type"].endswith("/step-up-required"), body
    # New node evidence answers the step-up; what is left is the throttle of this minute.
    status, body = stepped.attest()
    assert status == 201, body
    status, body = stepped.batch(stepped_entries)
    assert status == 429 and body["type"].endswith("/anomaly-throttled"), body
    actions = [e.action for e in _events(server, stepped.agent.spiffe_id, "anomaly.")]
    assert actions == ["anomaly.throttle", "anomaly.step-up"]
    assert server.admin("GET", f"/v1/anomalies/{stepped_key}")["action"] == "step-up"

    # Deny: the agent is banned and its SVID revoked (CRL and OCSP, read by openssl).
    agent_chain = denied.agent.chain_pem
    status, body = denied.batch(denied_entries)
    assert status == 403 and body["type"].endswith("/anomaly-denied"), body
    shown = server.admin("GET", f"/v1/agents?spiffe_id={denied.agent.spiffe_id}")
    assert shown["banned"] is True
    status, body = denied.batch(denied_entries)
    assert status in (401, 403), body
    status, body = denied.attest()
    assert status == 403 and "banned" in body["detail"], body
    leaf = x509.load_pem_x509_certificates(agent_chain.encode())[0]
    crl = x509.load_pem_x509_crl(Path(_fetch_crl(server, tmp_path)).read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    root = tmp_path / "root.pem"
    root.write_bytes(server.request("GET", "/v1/bundle?format=pem")[2])
    leaf_path, intermediate = _split_chain(tmp_path, "agent", agent_chain)
    assert _ocsp_status(server, tmp_path, leaf_path, intermediate, str(root)) == "revoked"
    denials = _events(server, denied.agent.spiffe_id, "anomaly.deny")
    assert len(denials) == 1 and json.loads(denials[0].detail)["entry"] == denied_key


def test_an_agent_asking_for_entries_it_does_not_serve_is_observed(server: Server) -> None:
    node, _ = _attested(server, "node-probe", 1)
    _, others = _attested(server, "node-other", 1)
    key = _learn(server, node)
    wait_for_second(50)
    statuses = [node.batch(others)[0] for _ in range(6)]
    assert statuses == [403] * 6
    observed = _events(server, node.agent.spiffe_id, "anomaly.observe")
    assert len(observed) == 1, [e.detail for e in observed]
    detail = json.loads(observed[0].detail)
    assert detail["signals"] == ["refusals"] and detail["entry"] == key
    shown = server.admin("GET", f"/v1/anomalies/{key}")
    assert shown["action"] is None  # observed, nothing refused for it


def test_an_agents_baseline_is_shown_and_set_like_an_entrys(server: Server) -> None:
    node, entries = _attested(server, "node-admin", 2)
    status, body = node.batch(entries)
    assert status == 201, body
    key = node.key
    # `idmint agent show` names the key operators pass to `idmint anomaly`.
    done = subprocess.run(
        [*_idmint(), "agent", "show", "--data-dir", str(server.data_dir), node.agent.spiffe_id],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert done.returncode == 0 and key in done.stdout, done.stdout + done.stderr
    done = subprocess.run(
        [*_idmint(), "anomaly", "show", "--data-dir", str(server.data_dir), key],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert done.returncode == 0 and key in done.stdout, done.stdout + done.stderr
    shown = server.admin("GET", f"/v1/anomalies/{key}")
    assert shown["entry_id"] == key and shown["samples"] == 1
    changed = server.admin("PATCH", f"/v1/anomalies/{key}", {"policy": "observe"})
    assert changed["policy"] == "observe"
    listed = [a["entry_id"] for a in server.admin("GET", "/v1/anomalies")["anomalies"]]
    assert key in listed and key.removeprefix("agent:") in listed
    with pytest.raises(AdminAPIError, match="HTTP 404"):
        server.admin(
            "PATCH", "/v1/anomalies/agent:00000000-0000-0000-0000-000000000000", {"policy": "deny"}
        )


def _credentials_for(server: Server, spiffe_ids: list[str]) -> int:
    database = server_database(server)
    try:
        with database.reading() as session:
            return len(
                session.scalars(
                    select(IssuedCredential.id).where(IssuedCredential.spiffe_id.in_(spiffe_ids))
                ).all()
            )
    finally:
        database.close()


def _until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_a_running_agent_answers_a_step_up_by_attesting_afresh(
    server: Server, tmp_path: Path
) -> None:
    """``idmint agent`` itself: throttled, stepped up, attests with new node evidence."""
    running = _agent(server, tmp_path, "node-e2e", _x509pop_files(server, tmp_path, "node-e2e"))
    try:
        agents = server.admin("GET", "/v1/agents")
        mine = next(a for a in agents if "x509pop:subject:cn:node-e2e" in a["selectors"])
        key = f"agent:{mine['entry_id']}"
        learn_week(
            server,
            {"id": key, "spiffe_id": mine["spiffe_id"]},
            kind="agent-x509",
            count=3,
            by_proof=True,
        )
        wait_for_second(30)
        # Six new entries at once: a batch of 6 against a limit of 5.4/min.
        made = [
            parented_entry(server, mine["spiffe_id"], f"e2e/w{n}", [f"unix:uid:{3000 + n}"])
            for n in range(6)
        ]
        attests = lambda: len(_events(server, mine["spiffe_id"], "agent.attest"))  # noqa: E731
        assert attests() == 1
        _until(lambda: attests() == 2, 120, "the agent attests afresh after the step-up")
        actions = [e.action for e in _events(server, mine["spiffe_id"], "anomaly.")]
        assert actions == ["anomaly.throttle", "anomaly.step-up"]
        assert "attest afresh" in running.log.read_text()
        assert _credentials_for(server, [e["spiffe_id"] for e in made]) == 0
        # The operator lifts the decision and forgets the baseline: it learns anew,
        # and the agent gets its SVIDs on its own.
        server.admin("DELETE", f"/v1/anomalies/{key}?forget=true")
        _until(
            lambda: _credentials_for(server, [e["spiffe_id"] for e in made]) == 6,
            60,
            "the agent signs its six entries once the decision is lifted",
        )
        assert running.process.poll() is None
    finally:
        running.stop()
