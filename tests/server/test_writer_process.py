"""The writer process beside ``idmint server``: restarted when it dies, drained at shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from idmint.ca.config import load
from idmint.ca.storage.audit import verify_database
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import IssuedCredential
from tests.server.conftest import Server, init_data_dir, start_server

pytestmark = pytest.mark.slow  # kills and restarts the writer of server subprocesses


def _writer_pid(data: Path) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"idmint.ca.storage.writer" in command and str(data).encode() in command:
            return int(entry.name)
    raise AssertionError(f"no writer process for {data}")


def _jwt(server: Server, spiffe_id: str) -> tuple[int, dict[str, object]]:
    body = {
        "attestation": {"type": "join_token", "token": server.join_token(spiffe_id)},
        "audience": "db",
    }
    status, _, answer = server.request("POST", "/v1/svid/jwt", body)
    return status, answer


@pytest.fixture
def own_server(tmp_path: Path) -> Server:
    return start_server(init_data_dir(tmp_path / "data"), tmp_path, workers=2)


def test_a_killed_writer_is_restarted_and_issuance_resumes(own_server: Server) -> None:
    spiffe_id = "spiffe://example.org/resumes"
    own_server.entry(spiffe_id, ["join_token:any:true"])
    try:
        assert _jwt(own_server, spiffe_id)[0] == 201
        first = _writer_pid(own_server.data_dir)
        os.kill(first, signal.SIGKILL)
        outcomes = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, answer = _jwt(own_server, spiffe_id)
            outcomes.append(status)
            if status == 201:
                break
            # While it is down: a problem document saying so, never a 500.
            assert status == 503, answer
            assert "writer" in str(answer["detail"])
            time.sleep(0.2)
        assert outcomes[-1] == 201, outcomes
        assert _writer_pid(own_server.data_dir) != first
    finally:
        own_server.process.terminate()
        own_server.process.wait(timeout=30)


def test_records_sent_last_are_committed_at_shutdown(own_server: Server) -> None:
    spiffe_id = "spiffe://example.org/last"
    own_server.entry(spiffe_id, ["join_token:any:true"])
    jtis = []
    try:
        for _ in range(5):
            status, answer = _jwt(own_server, spiffe_id)
            assert status == 201, answer
            token = str(answer["token"])
            import jwt as pyjwt

            jtis.append(pyjwt.decode(token, options={"verify_signature": False})["jti"])
        writer = _writer_pid(own_server.data_dir)
    finally:
        own_server.process.terminate()
        own_server.process.wait(timeout=30)
    # The writer went with the server, after committing.
    assert (
        not Path(f"/proc/{writer}").exists()
        or b"Z" in Path(f"/proc/{writer}/stat").read_bytes().split(b")")[-1][:3]
    )
    database = Database(load(own_server.data_dir).database_url)
    try:
        with database.reading() as session:
            recorded = set(session.scalars(select(IssuedCredential.identifier)))
            verify_database(session)
    finally:
        database.close()
    assert set(jtis) <= recorded


def test_the_writer_stops_when_the_server_master_is_killed(tmp_path: Path) -> None:
    data = init_data_dir(tmp_path / "data")
    server = start_server(data, tmp_path, workers=1, new_session=True)
    writer = _writer_pid(data)
    try:
        os.kill(server.process.pid, signal.SIGKILL)  # the master only
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{writer}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{writer}").exists(), "the writer outlived its server"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)  # workers, if any are left
