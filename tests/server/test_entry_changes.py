"""Entry changes through the admin API and the CLI reach every worker within ``cache_seconds``.

A server with two workers and a cache of ``CACHE`` seconds: a change made
through the admin API (the CLI's path while a server runs) lands in one
worker; after ``CACHE`` seconds no request on a fresh connection, to
whichever worker, may still be served the old entry. Beside it, an entry
index of the test's own (a replica, as far as it can tell) is refreshed
from the change log and must show the change too. The CLI writing the
database itself (no server running) is checked the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idmint.ca.issuance.entry_index import EntryIndex, load, refresh
from idmint.ca.storage.db import Database
from tests.cli.conftest import run_idmint
from tests.server.conftest import Server, csr_pem, init_data_dir, start_server

CACHE = 0.5
#: Fresh connections per check: with two workers, each is reached by some.
ATTEMPTS = 6


@pytest.fixture(scope="module")
def cached_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("entry-changes")
    data = init_data_dir(base / "data", cache_seconds=CACHE)
    running = start_server(data, base, workers=2)
    yield running
    running.process.terminate()
    running.process.wait(timeout=30)


def _database(data: Path) -> Database:
    return Database(f"sqlite:///{data / 'idmint.db'}")


def _x509(server: Server, token: str) -> tuple[int, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    status, _, body = server.request(
        "POST",
        "/v1/svid/x509",
        {
            "attestation": {"type": "join_token", "token": token},
            "csr": csr_pem(ec.generate_private_key(ec.SECP256R1())),
        },
    )
    return status, body


def _refused_everywhere(server: Server, tokens: list[str]) -> None:
    """Each token (its entry changed a moment ago) is refused, by every worker."""
    time.sleep(CACHE + 0.1)  # every worker state cached before the change has expired
    for token in tokens:
        status, body = _x509(server, token)
        assert status == 403, body
        assert body["type"].endswith("/no-matching-entry"), body


def _tokens(server: Server, spiffe_id: str) -> list[str]:
    return [server.join_token(spiffe_id) for _ in range(ATTEMPTS)]


def _index_sees(index: EntryIndex, database: Database, entry_id: str) -> Any:
    assert refresh(index, database) is index  # from the change log, not reloaded whole
    return index.get(entry_id)


def test_admin_api_changes_reach_every_worker(cached_server: Server) -> None:
    server = cached_server
    database = _database(server.data_dir)
    try:
        index = load(database)
        made = server.entry("spiffe://example.org/api-path", ["join_token:any:true"])
        seen = _index_sees(index, database, made["id"])
        assert seen is not None and not seen.disabled
        tokens = _tokens(server, made["spiffe_id"])
        assert _x509(server, tokens.pop())[0] == 201

        server.admin("PATCH", f"/v1/entries/{made['id']}", {"disabled": True})
        assert _index_sees(index, database, made["id"]).disabled
        _refused_everywhere(server, tokens[:3])

        server.admin("PATCH", f"/v1/entries/{made['id']}", {"disabled": False})
        time.sleep(CACHE + 0.1)
        assert _x509(server, tokens[3])[0] == 201
        server.admin("DELETE", f"/v1/entries/{made['id']}")
        assert _index_sees(index, database, made["id"]) is None
        _refused_everywhere(server, tokens[4:])
    finally:
        database.close()


def test_revoking_an_entry_over_the_api_reaches_every_worker(cached_server: Server) -> None:
    server = cached_server
    database = _database(server.data_dir)
    try:
        index = load(database)
        made = server.entry("spiffe://example.org/revoke-path", ["join_token:any:true"])
        tokens = _tokens(server, made["spiffe_id"])
        assert _x509(server, tokens.pop())[0] == 201
        server.admin("POST", "/v1/revocations", {"kind": "entry", "entry_id": made["id"]})
        assert _index_sees(index, database, made["id"]).disabled
        _refused_everywhere(server, tokens)
    finally:
        database.close()


def test_cli_changes_through_the_server_reach_every_worker(cached_server: Server) -> None:
    """While a server runs, ``idmint entry update`` goes through its admin socket."""
    server = cached_server
    made = server.entry("spiffe://example.org/cli-path", ["join_token:any:true"])
    tokens = _tokens(server, made["spiffe_id"])
    assert _x509(server, tokens.pop())[0] == 201
    done = run_idmint(
        "entry", "update", made["id"], "--disabled", "--data-dir", str(server.data_dir)
    )
    assert done.returncode == 0, done.stderr
    _refused_everywhere(server, tokens)


def test_cli_changes_without_a_server_reach_an_index(tmp_path: Path) -> None:
    """No server: the CLI writes the database itself; a replica's index follows."""
    data = init_data_dir(tmp_path / "data")
    flags = ("--data-dir", str(data))
    database = _database(data)
    try:
        index = load(database)
        done = run_idmint(
            "entry", "create", *flags, "--spiffe-id", "spiffe://example.org/offline",
            "--selector", "unix:uid:1", "--owner", "t", "--expires-at", "1d", "--output", "json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        entry_id = json.loads(done.stdout)["id"]
        assert _index_sees(index, database, entry_id).selectors == ("unix:uid:1",)

        done = run_idmint("entry", "update", entry_id, *flags, "--selector", "unix:uid:2")
        assert done.returncode == 0, done.stderr
        assert _index_sees(index, database, entry_id).selectors == ("unix:uid:2",)
        assert index.candidates(["unix:uid:1"]) == []

        done = run_idmint("revoke", "entry", *flags, "--id", entry_id)
        assert done.returncode == 0, done.stderr
        assert _index_sees(index, database, entry_id).disabled

        done = run_idmint("entry", "delete", entry_id, *flags)
        assert done.returncode == 0, done.stderr
        assert _index_sees(index, database, entry_id) is None
    finally:
        database.close()
