"""A pipeline step: the job's own OIDC token (GitHub Actions style) becomes a JWT-SVID."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.server.conftest import Server

IDMINT = str(Path(sys.executable).parent / "idmint")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDMINT_", "ACTIONS_"))}
    env.pop("SOFTHSM2_CONF", None)
    return {**env, **extra}


def test_github_actions_job_gets_a_jwt_svid_without_a_static_secret(
    server: Server, tmp_path: Path
) -> None:
    server.entry("spiffe://example.org/ci/app", ["oidc:ci:repository:org/app"], audiences=["vault"])
    asked: list[dict[str, Any]] = []

    class ActionsTokenEndpoint(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            asked.append({"auth": self.headers.get("Authorization"), "query": query})
            token = server.ci.token(
                server.ci.claims(
                    query["audience"][0],
                    repository="org/app",
                    sub="repo:org/app:ref:refs/heads/main",
                )
            )
            body = json.dumps({"value": token}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # keep stderr for our own output

    endpoint = http.server.HTTPServer(("127.0.0.1", 0), ActionsTokenEndpoint)
    thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
    thread.start()
    github_env = tmp_path / "github_env"
    try:
        done = subprocess.run(
            [
                IDMINT,
                "svid",
                "jwt",
                "--server",
                server.url,
                "--bundle",
                server.bundle_file,
                "--ci",
                "github",
                "--audience",
                "vault",
                "--format",
                "env",
                "--out",
                str(github_env),
            ],
            capture_output=True,
            text=True,
            check=False,
            env=_env(
                ACTIONS_ID_TOKEN_REQUEST_URL=f"http://127.0.0.1:{endpoint.server_port}/token?api-version=2.0",
                ACTIONS_ID_TOKEN_REQUEST_TOKEN="request-token-123",
            ),
        )
    finally:
        endpoint.shutdown()
        endpoint.server_close()
    assert done.returncode == 0, done.stderr
    assert asked[0]["auth"] == "Bearer request-token-123"
    assert asked[0]["query"]["audience"] == ["idmint"]
    name, _, token = github_env.read_text().strip().partition("=")
    assert name == "IDMINT_JWT_SVID"
    status, _, valid = server.request(
        "POST", "/v1/svid/jwt/validate", {"token": token, "audience": "vault"}
    )
    assert status == 200 and valid["spiffe_id"] == "spiffe://example.org/ci/app"

    missing = subprocess.run(
        [
            IDMINT,
            "svid",
            "jwt",
            "--server",
            server.url,
            "--bundle",
            server.bundle_file,
            "--ci",
            "github",
            "--audience",
            "vault",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
    )
    assert missing.returncode == 1 and "id-token: write" in missing.stderr


def test_jwt_from_an_existing_x509_svid(server: Server, tmp_path: Path) -> None:
    token = server.join_token(
        server.entry("spiffe://example.org/ci/svid", ["join_token:any:true"])["spiffe_id"]
    )
    out = tmp_path / "svid"
    first = subprocess.run(
        server.svid_x509_command(token, out),
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
    )
    assert first.returncode == 0, first.stderr
    done = subprocess.run(
        [
            IDMINT,
            "svid",
            "jwt",
            "--server",
            server.url,
            "--bundle",
            server.bundle_file,
            "--svid",
            str(out),
            "--audience",
            "db",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spiffe_id"] == "spiffe://example.org/ci/svid"
