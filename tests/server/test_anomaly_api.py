"""Anomaly response through the real server: a CI identity attesting from a new ref is denied.

Learning is shortened in the config (one sample, no minutes) so that no
time has to pass; tests/ca/test_anomaly.py covers the learned week.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.server.conftest import (
    Server,
    _idmint,
    clean_env,
    csr_pem,
    start_attesting_server,
    stop_server,
)
from tests.server.test_revocation import _fetch_crl, _ocsp_status, _split_chain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_attesting_server(
        tmp_path_factory.mktemp("anomaly-server"),
        workers=2,
        extra_config="\n[anomaly]\nlearning_minutes = 0\nlearning_samples = 1\nsync_seconds = 0\n",
    )
    yield running
    stop_server(running)


def _attest(server: Server, ref: str) -> tuple[int, Any]:
    token = server.ci.token(
        server.ci.claims("idmint", sub=f"repo:org/app:ref:{ref}", repository="org/app", ref=ref)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = server.request(
        "POST",
        "/v1/svid/x509",
        {"attestation": {"type": "oidc", "token": token}, "csr": csr_pem(key)},
    )
    return status, body


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_idmint(), "anomaly", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )


def test_deny_revokes_and_the_crl_and_ocsp_show_it(server: Server, tmp_path: Path) -> None:
    entry = server.entry("spiffe://example.org/ci/app", ["oidc:ci:repository:org/app"])
    changed = server.admin("PATCH", f"/v1/anomalies/{entry['id']}", {"policy": "deny"})
    assert changed["policy"] == "deny"
    status, first = _attest(server, "refs/heads/main")
    assert status == 201, first
    status, again = _attest(server, "refs/heads/main")
    assert status == 201, again  # the same source again: nothing unusual

    status, refused = _attest(server, "refs/heads/evil")
    assert status == 403, refused
    assert refused["type"].endswith("/anomaly-denied")
    assert "attestation from a new source" in refused["detail"]
    assert "refs/heads/evil" in refused["detail"]
    # The entry is disabled and what it held is revoked: CRL and OCSP say so.
    assert server.admin("GET", f"/v1/entries/{entry['id']}")["disabled"] is True
    root = tmp_path / "root.pem"
    root.write_text(first["bundle_pem"])
    crl = x509.load_pem_x509_crl(Path(_fetch_crl(server, tmp_path)).read_bytes())
    for svid in (first, again):
        assert crl.get_revoked_certificate_by_serial_number(int(svid["serial"], 16)) is not None
    leaf, intermediate = _split_chain(tmp_path, "first", first["chain_pem"])
    assert _ocsp_status(server, tmp_path, leaf, intermediate, str(root)) == "revoked"

    # Operators see it in the admin API and the CLI, with the reason.
    listed = server.admin("GET", "/v1/anomalies")["anomalies"]
    (mine,) = [a for a in listed if a["entry_id"] == entry["id"]]
    assert mine["action"] == "deny" and mine["samples"] >= 2
    assert mine["sources"] == [
        "oidc:ci:ref:refs/heads/evil oidc:ci:repository:org/app",
        "oidc:ci:ref:refs/heads/main oidc:ci:repository:org/app",
    ]
    done = _cli(server, "list")
    assert done.returncode == 0, done.stderr
    assert entry["id"] in done.stdout and "deny" in done.stdout
    shown = _cli(server, "show", entry["id"], "--output", "json")
    assert json.loads(shown.stdout)["reason"].startswith("attestation from a new source")
    cleared = _cli(server, "clear", entry["id"])
    assert cleared.returncode == 0, cleared.stderr
    assert server.admin("GET", f"/v1/anomalies/{entry['id']}")["action"] is None


def test_the_admin_api_refuses_bad_input_and_anonymous_callers(server: Server) -> None:
    status, _, body = server.request("GET", "/v1/anomalies")
    assert status == 401, body
    entry = server.entry("spiffe://example.org/ci/other", ["oidc:ci:repository:org/other"])
    status, _, body = server.request("PATCH", f"/v1/anomalies/{entry['id']}", {"policy": "deny"})
    assert status == 401, body
    done = _cli(server, "policy", "--entry", entry["id"], "--action", "observe", "--exempt")
    assert done.returncode == 0, done.stderr
    assert "observe" in done.stdout and "exempt" in done.stdout
    frozen = _cli(server, "policy", "--learn", "off")
    assert frozen.returncode == 0 and "learning off" in frozen.stdout
    unknown = _cli(server, "show", "no-such-entry")
    assert unknown.returncode == 1 and "no anomaly baseline for entry 'no-such-entry'" in (
        unknown.stderr
    )
