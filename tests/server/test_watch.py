"""``idmint svid x509 --watch`` keeps the files fresh and runs a command after each renewal."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.server.conftest import Server

pytestmark = pytest.mark.slow  # waits for two renewals


def test_watch_renews_atomically_and_runs_the_command(server: Server, tmp_path: Path) -> None:
    spiffe_id = "spiffe://example.org/watch/web"
    server.entry(spiffe_id, ["join_token:any:true"], x509_ttl_seconds=60)
    token = server.join_token(spiffe_id)
    out, marks = tmp_path / "svid", tmp_path / "renewals"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMINT_")}
    env.pop("SOFTHSM2_CONF", None)
    watcher = subprocess.Popen(
        server.svid_x509_command(
            token,
            out,
            "--watch",
            "--renew-at",
            "0.02",
            "--exec",
            f"sh -c 'echo renewed >> {marks}'",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    serials: set[int] = set()
    deadline = time.monotonic() + 20
    try:
        while len(serials) < 3:
            assert time.monotonic() < deadline, f"saw only {len(serials)} SVIDs"
            path = out / "svid.pem"
            if path.exists():
                leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
                serials.add(leaf.serial_number)
                assert (out / "svid.key").stat().st_mode & 0o777 == 0o600
            time.sleep(0.2)
    finally:
        watcher.send_signal(signal.SIGTERM)
        _, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 0, err
    assert "renewed spiffe://example.org/watch/web" in err
    assert marks.read_text().count("renewed") >= 2
