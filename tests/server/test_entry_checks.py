"""Entry checks through a running server: twins refused (409), unproduced selectors warned.

The CLI goes through the server's admin socket here, so the warnings are
about the attestors the server runs (this fixture configures all four).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.server.conftest import Server, clean_env

TYPE = "https://idmint.dev/problems/duplicate-entry"


def _idmint(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "idmint"), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )


def _entries(server: Server, spiffe_id: str) -> list[dict[str, Any]]:
    return [e for e in server.admin("GET", "/v1/entries")["entries"] if e["spiffe_id"] == spiffe_id]


def test_a_twin_entry_gets_409_naming_the_first_and_changes_nothing(server: Server) -> None:
    key, svid = server.x509_by_token("spiffe://example.org/ops/twins-admin", admin=True)
    spiffe_id = "spiffe://example.org/twins/web"
    body = {
        "spiffe_id": spiffe_id,
        "selectors": ["k8s:ns:prod", "k8s:sa:web"],
        "owner": "team-web",
        "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
    }

    def post(entry: dict[str, Any]) -> tuple[int, Any]:
        raw = json.dumps(entry).encode()
        header = server.proof_header(svid["chain_pem"], key, "POST", "/v1/entries", raw)
        status, _, answer = server.request(
            "POST", "/v1/entries", raw=raw, headers={"X-Idmint-Proof": header}
        )
        return status, answer

    # Eight identical creates at once, over both workers: one wins.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, [body] * 8))
    created = [answer for status, answer in results if status == 201]
    assert len(created) == 1, results
    first = created[0]["id"]
    for status, answer in results:
        if status != 201:
            assert status == 409 and answer["type"] == TYPE, answer
            assert f"entry {first} already grants {spiffe_id}" in answer["detail"]

    # The selectors reordered and other policy: the same grant, refused, nothing written.
    status, answer = post({**body, "selectors": ["k8s:sa:web", "k8s:ns:prod"], "owner": "x"})
    assert status == 409 and first in answer["detail"], answer
    assert [e["id"] for e in _entries(server, spiffe_id)] == [first]

    # Through the CLI (the admin socket): the same words, exit 1.
    done = _idmint(
        "entry", "create", "--data-dir", str(server.data_dir), "--spiffe-id", spiffe_id,
        "--selector", "k8s:sa:web", "--selector", "k8s:ns:prod", "--expires-at", "1d",
    )  # fmt: skip
    assert done.returncode == 1
    assert f"entry {first} already grants" in done.stderr and "HTTP 409" in done.stderr
    assert [e["id"] for e in _entries(server, spiffe_id)] == [first]


def test_the_cli_warns_of_selectors_the_server_attestors_never_produce(server: Server) -> None:
    def create(name: str, *selectors: str) -> subprocess.CompletedProcess[str]:
        args = [a for s in selectors for a in ("--selector", s)]
        done = _idmint(
            "entry", "create", "--data-dir", str(server.data_dir), "--spiffe-id",
            f"spiffe://example.org/warn/{name}", "--expires-at", "1d", "--output", "json", *args,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["spiffe_id"].endswith(name)  # stdout stays JSON
        return done

    unix = create("unix", "unix:uid:1000")
    assert "warning: selector type 'unix'" in unix.stderr
    assert "(join_token, k8s_psat, oidc, x509pop)" in unix.stderr
    typo = create("typo", "k8:ns:prod")
    assert "selector type 'k8' is produced by no attestor" in typo.stderr
    # This server runs the Kubernetes and OIDC attestors.
    assert "warning" not in create("k8s", "k8s:ns:prod", "oidc:ci:sub:repo:x").stderr
