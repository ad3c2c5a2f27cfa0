"""An agent attests with each kind of node evidence, and entries can target it by node selector.

One server trusts a CI OIDC issuer, a Kubernetes issuer and a bootstrap CA
(x509pop); an ``idmint agent`` process attests with each. Its agent ID is
derived from what the evidence proved, and an entry whose node selector the
evidence produced is served by that agent only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.agent.conftest import AgentProcess, eventually, shared_dir
from tests.server.conftest import (
    Server,
    _free_port,
    _idmint,
    bootstrap_leaf,
    clean_env,
    start_attesting_server,
    stop_server,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_attesting_server(tmp_path_factory.mktemp("node-evidence"))
    yield running
    stop_server(running)


def _agent(server: Server, directory: Path, name: str, evidence: list[str]) -> AgentProcess:
    socket_path, port, log_path = (
        directory / f"{name}.sock",
        _free_port(),
        directory / f"{name}.log",
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *_idmint(), "agent", "--server", server.url, "--bundle", server.bundle_file,
                "--socket", str(socket_path), "--health-listen", f"127.0.0.1:{port}",
                "--sync-interval", "0.5", *evidence,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )  # fmt: skip
    running = AgentProcess("", socket_path, port, process, log_path)
    try:
        running.wait_ready()
    except BaseException:
        running.stop()
        raise
    return running


def _x509pop_files(server: Server, directory: Path, cn: str) -> list[str]:
    key, chain = bootstrap_leaf(server.bootstrap_key, server.bootstrap_cert, cn)
    (directory / f"{cn}.pem").write_text(chain)
    key_file = directory / f"{cn}.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ["--x509pop-cert", str(directory / f"{cn}.pem"), "--x509pop-key", str(key_file)]


def _evidence(server: Server, directory: Path, kind: str) -> tuple[list[str], str]:
    """The agent's options for ``kind``, and a node selector that evidence produces."""
    if kind == "x509pop":
        return _x509pop_files(server, directory, "node-1"), "x509pop:subject:cn:node-1"
    token_file = directory / f"{kind}.jwt"
    if kind == "oidc":
        claims = server.ci.claims("idmint", sub="repo:org/app:ref:main", repository="org/app")
        token_file.write_text(server.ci.token(claims))
        return ["--oidc-token-file", str(token_file)], "oidc:ci:repository:org/app"
    pod: dict[str, Any] = {
        "namespace": "infra",
        "serviceaccount": {"name": "node-agent", "uid": "u1"},
        "pod": {"name": "node-agent-x1", "uid": "p1"},
    }
    claims = server.k8s.claims("idmint", sub="system:serviceaccount:infra:node-agent")
    claims["kubernetes.io"] = pod
    token_file.write_text(server.k8s.token(claims))
    return ["--k8s-token-file", str(token_file)], "k8s:cluster:test"


@pytest.mark.parametrize("kind", ["x509pop", "oidc", "k8s_psat"])
def test_an_agent_attests_with_node_evidence_and_serves_entries_for_its_node_selectors(
    server: Server, kind: str
) -> None:
    directory = shared_dir()
    options, node_selector = _evidence(server, directory, kind)
    entry = server.entry(
        f"spiffe://example.org/by-node/{kind}",
        ["unix:uid:0"],
        node_selectors=[node_selector],
    )
    agent = _agent(server, directory, kind, options)
    try:
        agents: list[dict[str, Any]] = server.admin("GET", "/v1/agents")
        mine = [a for a in agents if a["attestation_type"] == kind]
        assert len(mine) == 1, agents
        assert mine[0]["spiffe_id"].startswith(f"spiffe://example.org/idmint/agent/{kind}/")
        assert node_selector in mine[0]["selectors"]
        # The entry targets its node selector: this agent holds an SVID for it.
        eventually(lambda: agent.health()[1]["svids"] >= 1, timeout=10)
        assert agent.health()[1]["entries"] == 1
    finally:
        agent.stop()
        server.admin("DELETE", f"/v1/entries/{entry['id']}")
        shutil.rmtree(directory, ignore_errors=True)


def test_an_agent_with_other_node_evidence_does_not_get_the_entry(server: Server) -> None:
    directory = shared_dir()
    entry = server.entry(
        "spiffe://example.org/by-node/only-node-9",
        ["unix:uid:0"],
        node_selectors=["x509pop:subject:cn:node-9"],
    )
    agent = _agent(server, directory, "node-2", _x509pop_files(server, directory, "node-2"))
    try:
        agent.wait_ready()
        time.sleep(2.0)  # a few syncs: an entry it should not get would be there by now
        assert agent.health()[1]["entries"] == 0
        assert agent.health()[1]["svids"] == 0
    finally:
        agent.stop()
        server.admin("DELETE", f"/v1/entries/{entry['id']}")
        shutil.rmtree(directory, ignore_errors=True)
