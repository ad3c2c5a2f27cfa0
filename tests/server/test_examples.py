"""The examples in examples/ run end to end against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import Server

pytestmark = pytest.mark.slow  # the examples as subprocesses, a root rotation runbook


EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMINT_")}
    env.pop("SOFTHSM2_CONF", None)
    env["IDMINT"] = str(BIN / "idmint")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def test_mtls_pair(server: Server) -> None:
    for name in ("api", "web", "intruder"):
        server.entry(f"spiffe://example.org/ex/{name}", ["join_token:any:true"])
    tokens = {n: server.join_token(f"spiffe://example.org/ex/{n}") for n in ("api", "web")}
    command = [
        sys.executable,
        str(EXAMPLES / "mtls_pair" / "mtls_pair.py"),
        "--server",
        server.url,
        "--bundle",
        server.bundle_file,
        "--allow",
        "spiffe://example.org/ex/web",
    ]
    done = subprocess.run(
        [*command, "--api-token", tokens["api"], "--web-token", tokens["web"]],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "web called spiffe://example.org/ex/api: hello spiffe://example.org/ex/web" in done.stdout
    )
    refused = subprocess.run(
        [
            *command,
            "--api-token",
            server.join_token("spiffe://example.org/ex/api"),
            "--web-token",
            server.join_token("spiffe://example.org/ex/intruder"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert refused.returncode == 1 and "denied: spiffe://example.org/ex/intruder" in refused.stdout


def test_pipeline_token(server: Server, tmp_path: Path) -> None:
    server.entry("spiffe://example.org/ci/deploy", ["oidc:ci:repository:org/app"])
    token_file = tmp_path / "ci-token"
    token_file.write_text(server.ci.token(server.ci.claims("idmint", repository="org/app")))
    service = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLES / "pipeline_token" / "service.py"),
            "--issuer",
            server.url,
            "--ca",
            server.bundle_file,
            "--trust-domain",
            "example.org",
            "--audience",
            "https://deploy.example",
            "--allow",
            "spiffe://example.org/ci/deploy",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert service.stdout is not None
        port = int(service.stdout.readline())
        done = subprocess.run(
            [
                str(EXAMPLES / "pipeline_token" / "pipeline_step.sh"),
                server.url,
                server.bundle_file,
                str(token_file),
                "https://deploy.example",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            env=_env(),
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "deploy accepted from spiffe://example.org/ci/deploy" in done.stdout
    finally:
        service.terminate()
        service.communicate(timeout=10)


def test_root_rotation_runbook(server: Server) -> None:
    done = subprocess.run(
        [str(EXAMPLES / "root_rotation" / "rotate_root.sh"), str(server.data_dir)],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # By default the old root stays trusted: SVIDs under it keep validating.
    assert "Audit log intact" in done.stdout and "stays trusted" in done.stdout
    # Every step of the rotation, listed with who did it (the CLI, not the server).
    steps = [line.split() for line in done.stdout.splitlines() if "authority." in line]
    done_by = {(fields[2], fields[4].split(":")[0]) for fields in steps if len(fields) >= 5}
    for action in ("authority.create.root", "authority.activate.root"):
        assert (action, "cli") in done_by, done.stdout
    assert ("authority.activate.intermediate", "cli") in done_by, done.stdout
    _, _, bundle = server.request("GET", "/v1/bundle?format=pem")
    assert bundle.count(b"BEGIN CERTIFICATE") == 2
    active = next(
        a["id"] for a in server.authority("list") if a["kind"] == "root" and a["state"] == "active"
    )
    done = subprocess.run(
        [
            str(EXAMPLES / "root_rotation" / "rotate_root.sh"),
            str(server.data_dir),
            "0",
            "--remove-old-root-now",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removed" in done.stdout
    _, _, bundle = server.request("GET", "/v1/bundle?format=pem")
    # The root active before this run is gone; the first run's retired root and the new one stay.
    state = next(a["state"] for a in server.authority("list") if a["id"] == active)
    assert state not in ("active", "retired", "prepared"), state
    assert bundle.count(b"BEGIN CERTIFICATE") == 2


def test_fake_ci_issuer_makes_a_token_its_jwks_verifies(tmp_path: Path) -> None:
    import json

    import jwt

    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "pipeline_token" / "fake_ci.py"),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    assert (
        "[attestation.oidc.ci]" in done.stderr and 'jwks_file = "fake-ci-jwks.json"' in done.stderr
    )
    jwks = json.loads((tmp_path / "fake-ci-jwks.json").read_text())
    key = jwt.PyJWKSet.from_dict(jwks).keys[0].key
    claims = jwt.decode(
        done.stdout.strip(), key, algorithms=["RS256"], audience="idmint",
        issuer="https://fake-ci.idmint.test",
    )  # fmt: skip
    assert claims["repository"] == "org/app" and claims["exp"] - claims["iat"] == 300
    assert (tmp_path / "fake-ci-key.pem").stat().st_mode & 0o777 == 0o600
