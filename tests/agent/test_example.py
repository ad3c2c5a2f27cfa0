"""examples/agent_mtls: two uids, one agent, two SPIFFE IDs, mutual TLS, no secret.

Each side runs as its own unix user (the tests run as root: ``user=`` in a
child) and gets its SVID only from the agent's Workload API; the handshake
between them is real TLS over loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import idmint
from tests.agent.conftest import (
    TRUST_DOMAIN,
    AgentProcess,
    _free_port,
    parented_entry,
    python_for_others,
)
from tests.server.conftest import Server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_mtls" / "agent_mtls.py"
API, WEB, INTRUDER, NOBODY = 1000, 1001, 1002, 1003


def _id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ex/{name}"


@pytest.fixture(scope="module")
def code(directory: Path) -> Path:
    """The example and the idmint package where other users can read them."""
    place = directory / "example"
    # symlinks=False: a checkout's idmint/ca etc. are links to folders in it.
    shutil.copytree(Path(idmint.__file__).parent, place / "idmint", symlinks=False)
    shutil.copy(EXAMPLE, place / "agent_mtls.py")
    for path in [place, *place.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return place


def _command(uid: int, code: Path, agent: AgentProcess, *arguments: str) -> dict[str, Any]:
    python, site = python_for_others()
    return {
        "args": [python, "-S", str(code / "agent_mtls.py"), *arguments],
        "user": uid,
        "group": uid,
        "extra_groups": [],
        "env": {
            "PATH": "/usr/bin:/bin",
            "SPIFFE_ENDPOINT_SOCKET": agent.address,
            "HOME": "/tmp",
            "PYTHONPATH": f"{code}:{site}",
        },
        "cwd": "/",
        "text": True,
    }


def test_two_uids_talk_mtls_with_identities_from_the_agent(
    server: Server, agent: AgentProcess, code: Path
) -> None:
    for uid, name in ((API, "api"), (WEB, "web"), (INTRUDER, "intruder")):
        parented_entry(server, agent.spiffe_id, f"ex/{name}", [f"unix:uid:{uid}"])
    agent.wait_ready(svids=3)
    port = _free_port()
    api = subprocess.Popen(
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **_command(
            API, code, agent, "serve", "--port", str(port), "--allow", _id("web"),
            "--connections", "2",
        ),
    )  # fmt: skip
    try:
        assert api.stdout is not None
        listening = json.loads(api.stdout.readline() or "{}")
        assert listening.get("spiffe_id") == _id("api"), api.stderr.read() if api.stderr else ""

        def call(uid: int) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                capture_output=True,
                timeout=60,
                check=False,
                **_command(uid, code, agent, "call", "--port", str(port), "--expect", _id("api")),
            )

        web = call(WEB)
        assert web.returncode == 0, web.stdout + web.stderr
        assert json.loads(web.stdout) == {
            "me": _id("web"),
            "server": _id("api"),
            "reply": f"hello {_id('web')}",
        }
        intruder = call(INTRUDER)
        assert intruder.returncode == 1, intruder.stdout + intruder.stderr
        assert json.loads(intruder.stdout)["reply"] == f"denied: {_id('intruder')}"
        nobody = call(NOBODY)  # no entry for this uid: the agent refuses it
        assert nobody.returncode != 0
        assert "PERMISSION_DENIED" in nobody.stderr, nobody.stderr
        seen = [json.loads(line) for line in api.communicate(timeout=30)[0].splitlines()]
        assert seen == [
            {"caller": _id("web"), "allowed": True},
            {"caller": _id("intruder"), "allowed": False},
        ]
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()
