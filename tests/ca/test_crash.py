"""kill -9 in the middle of rotations and revocations, then restart: nothing lost.

A subprocess loops over issuing, revoking and rotating on an embedded data
directory and is killed with SIGKILL at random moments. After each kill:
every revocation it acknowledged is in the database, at most one authority
per kind is active (and one is), every authority not removed still has its
key in the HSM, the audit chain verifies, and the next run starts cleanly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from idmint.ca.authority.authorities import authorities
from idmint.ca.config import load
from idmint.ca.storage.audit import verify_database
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuthorityKind, AuthorityState, CredentialKind, Revocation
from idmint.hsm import KeyStore
from idmint.hsm.uri import PKCS11URI

pytestmark = pytest.mark.slow  # kill -9 in the middle of rotations, then restart


WORKER = Path(__file__).resolve().parent.parent / "crash_worker.py"


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMINT_")}
    env.pop("SOFTHSM2_CONF", None)
    env["PYTHONPATH"] = str(WORKER.parent.parent)
    return env


def _run_and_kill(data: Path, rng: random.Random) -> list[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_worker", str(data)],
        cwd=WORKER.parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.strip() == "READY", first + (process.stderr.read() if process.stderr else "")
    time.sleep(rng.uniform(0.3, 1.5))
    process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=30)
    return [line for line in output.splitlines() if line.startswith("ACK")]


def test_kill_minus_nine_during_rotation_and_revocation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "idmint.cli.main",
            "init",
            "--data-dir",
            str(data),
            "--trust-domain",
            "example.org",
        ],
        check=True,
        capture_output=True,
        env=_environment(),
    )
    rng = random.Random(1234)
    acknowledged: list[str] = []
    rotations = 0
    for _ in range(3):
        acks = _run_and_kill(data, rng)
        acknowledged += [a.split()[2] for a in acks if a.startswith("ACK revoke")]
        rotations += sum(a.startswith("ACK rotate") for a in acks)
    assert len(acknowledged) >= 3 and rotations >= 3, (len(acknowledged), rotations)

    config = load(data)
    os.environ.pop("SOFTHSM2_CONF", None)
    database = Database(config.database_url)
    try:
        with database.session() as session:
            revoked = set(
                session.scalars(
                    select(Revocation.identifier).where(Revocation.kind == CredentialKind.X509)
                )
            )
            verify_database(session)
        assert set(acknowledged) <= revoked
        for kind in AuthorityKind:
            active = authorities(database, kind, AuthorityState.ACTIVE)
            assert len(active) == 1, (kind, [(a.id, a.state) for a in authorities(database, kind)])
        with KeyStore(config.hsm) as keystore:
            on_token = {info.key_id for info in keystore.list_keys()}
        for row in authorities(database):
            if row.state is not AuthorityState.REMOVED:
                assert PKCS11URI.parse(row.key_uri).id in on_token, (
                    f"authority {row.id} lost its key"
                )
    finally:
        database.close()
    # And it starts again cleanly after the last kill.
    acks = _run_and_kill(data, rng)
    assert acks
