"""kill -9 of the server (master and workers) in the middle of revocations and rotations.

The admin socket is kept busy with revocations while an operator rotates
the JWT and intermediate authorities; the whole server process group is
killed with SIGKILL at a random moment and restarted, three times. After
each restart: every revocation the server acknowledged (HTTP 201) is
present, exactly one authority per kind is active, every authority that is
not removed still has its key on the token, and the audit chain verifies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from idmint.ca.authority.authorities import authorities
from idmint.ca.config import load
from idmint.ca.storage.audit import verify_database
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuthorityKind, AuthorityState, CredentialKind, Revocation
from idmint.cli.admin_client import call
from idmint.hsm import KeyStore
from idmint.hsm.uri import PKCS11URI
from tests.server.conftest import Server, clean_env, start_server

pytestmark = pytest.mark.slow  # kill -9 of a server subprocess and restarts


IDMINT = str(Path(sys.executable).parent / "idmint")


def _env() -> dict[str, str]:
    return clean_env()


def _start(data: Path, base: Path) -> Server:
    # Its own process group, so that kill -9 reaches every worker.
    return start_server(data, base, "killed", workers=2, new_session=True)


def _check(data: Path, acknowledged: set[str]) -> None:
    config = load(data)
    database = Database(config.database_url)
    try:
        with database.session() as session:
            present = set(
                session.scalars(
                    select(Revocation.identifier).where(Revocation.kind == CredentialKind.X509)
                )
            )
            verify_database(session)
        assert acknowledged <= present, acknowledged - present
        for kind in AuthorityKind:
            assert len(authorities(database, kind, AuthorityState.ACTIVE)) == 1, kind
        os.environ.pop("SOFTHSM2_CONF", None)
        with KeyStore(config.hsm) as keystore:
            on_token = {info.key_id for info in keystore.list_keys()}
        for row in authorities(database):
            if row.state is not AuthorityState.REMOVED:
                assert PKCS11URI.parse(row.key_uri).id in on_token, f"authority {row.id} lost"
    finally:
        database.close()


def test_kill_minus_nine_of_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    subprocess.run(
        [IDMINT, "init", "--data-dir", str(data), "--trust-domain", "example.org"],
        check=True,
        capture_output=True,
        env=_env(),
    )
    rng = random.Random(7)
    acknowledged: set[str] = set()
    for round_number in range(3):
        server = _start(data, tmp_path)
        serials = []
        for i in range(12):
            _, svid = server.x509_by_token(f"spiffe://example.org/kill/r{round_number}w{i}")
            serials.append(svid["serial"])
        stop = threading.Event()

        def revoke_all(serials: list[str] = serials, stop: threading.Event = stop) -> None:
            for serial in serials:
                if stop.is_set():
                    return
                try:
                    call(data, "POST", "/v1/revocations", {"kind": "x509", "serial": serial})
                    acknowledged.add(serial)  # the server said 201
                except Exception:
                    return  # the server died mid-request: not acknowledged

        def rotate(stop: threading.Event = stop) -> None:
            for kind in ("jwt", "intermediate") * 3:
                if stop.is_set():
                    return
                for verb in ("prepare", "activate"):
                    subprocess.run(
                        [IDMINT, "authority", verb, kind, "--data-dir", str(data)],
                        capture_output=True,
                        env=_env(),
                        check=False,
                    )

        workers = [threading.Thread(target=revoke_all), threading.Thread(target=rotate)]
        for worker in workers:
            worker.start()
        time.sleep(rng.uniform(0.3, 1.5))
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=20)
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        # A rotation step the kill interrupted may have left a prepared one: fine.
        _check(data, acknowledged)
    assert acknowledged, "no revocation was acknowledged before the kills"
    server = _start(data, tmp_path)  # and it comes back once more
    try:
        assert server.request("GET", "/readyz")[0] == 200
    finally:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
