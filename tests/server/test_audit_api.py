"""Audit checkpoints through the real server: signed on an interval, served, verified by PyJWT."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.server.conftest import Server, _idmint, clean_env, init_data_dir, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("audit-server")
    data = init_data_dir(base / "data")
    with (data / "idmint.toml").open("a") as config:
        config.write("\n[audit]\ncheckpoint_seconds = 1\n")
    running = start_server(data, base)
    yield running
    running.process.terminate()
    try:
        running.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        running.process.kill()


def _latest(server: Server) -> dict[str, Any]:
    status, _, body = server.request("GET", "/v1/audit/checkpoints")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def _wait_for_checkpoint(server: Server, seq: int) -> dict[str, Any]:
    """The server's rotation loop (every 10 s) signs checkpoints; wait for one covering ``seq``."""
    deadline = time.monotonic() + 60
    while True:
        latest = _latest(server)
        if latest["seq"] >= seq:
            return latest
        assert time.monotonic() < deadline, f"no checkpoint of event {seq}: {latest}"
        time.sleep(0.5)


def _head_seq(server: Server) -> int:
    done = subprocess.run(
        [*_idmint(), "audit", "verify", "--data-dir", str(server.data_dir), "--output", "json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    )
    return int(json.loads(done.stdout)["head_seq"])


def test_keys_are_published_apart_from_the_spiffe_bundle(server: Server) -> None:
    status, _, keys = server.request("GET", "/v1/audit/keys")
    assert status == 200
    (key,) = keys["keys"]
    assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
    _, _, bundle = server.request("GET", "/v1/bundle")
    _, _, oidc = server.request("GET", "/v1/jwks")
    published = {k.get("kid") for k in bundle["keys"]} | {k.get("kid") for k in oidc["keys"]}
    assert key["kid"] not in published


def test_checkpoints_are_signed_served_and_verify_with_pyjwt(
    server: Server, tmp_path: Path
) -> None:
    server.x509_by_token("spiffe://example.org/audited")
    seq = _head_seq(server)
    latest = _wait_for_checkpoint(server, seq)
    _, _, keys = server.request("GET", "/v1/audit/keys")
    signing = jwt.PyJWKSet.from_dict(keys)[jwt.get_unverified_header(latest["checkpoint"])["kid"]]
    claims = jwt.decode(latest["checkpoint"], signing.key, algorithms=["ES256"])
    assert (claims["seq"], claims["hash"]) == (latest["seq"], latest["hash"])
    assert claims["iss"] == "spiffe://example.org"
    status, _, same = server.request("GET", f"/v1/audit/checkpoints/{latest['number']}")
    assert status == 200 and same == latest
    status, _, first = server.request("GET", "/v1/audit/checkpoints/1")
    assert status == 200 and first["seq"] <= latest["seq"]
    status, headers, missing = server.request("GET", "/v1/audit/checkpoints/999999")
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert "no audit checkpoint number 999999" in missing["detail"]

    # An operator keeps both files outside the database and verifies with them.
    (tmp_path / "checkpoint.json").write_text(json.dumps(latest))
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    done = subprocess.run(
        [
            *_idmint(),
            "audit",
            "verify",
            "--data-dir",
            str(server.data_dir),
            "--checkpoint",
            str(tmp_path / "checkpoint.json"),
            "--keys",
            str(tmp_path / "keys.json"),
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"your checkpoint of event {latest['seq']}" in done.stdout


def test_an_authority_change_is_checkpointed_by_the_server(server: Server) -> None:
    before = _latest(server)
    server.authority("prepare", "jwt")
    seq = _head_seq(server)
    assert seq > before["seq"]
    assert _wait_for_checkpoint(server, seq)["seq"] == seq
