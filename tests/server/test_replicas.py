"""Two server replicas on one PostgreSQL database and one HSM token.

A rotation done through one is seen by the other; two replicas racing to
prepare a successor produce one; an SVID from one verifies with the
other's bundle.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.pg import fresh_database
from tests.server.conftest import Server, clean_env, csr_pem, start_server

pytestmark = pytest.mark.slow  # two server subprocesses on PostgreSQL


IDMINT = [str(Path(sys.executable).parent / "idmint")]


def _environment() -> dict[str, str]:
    return clean_env()


def _start(data: Path, base: Path, name: str) -> Server:
    return start_server(data, base, name)


@pytest.fixture
def replicas(pg_server: str, tmp_path: Path) -> Iterator[tuple[Server, Server, str]]:
    with fresh_database(pg_server) as url:
        first = tmp_path / "a"
        subprocess.run(
            [
                *IDMINT,
                "init",
                "--data-dir",
                str(first),
                "--trust-domain",
                "example.org",
                "--database-url",
                url,
            ],
            check=True,
            capture_output=True,
            env=_environment(),
        )
        # The second replica: its own data directory (server files, socket),
        # the same database and the same token.
        second = tmp_path / "b"
        second.mkdir()
        config = (first / "idmint.toml").read_text()
        config = config.replace('pin_file = "hsm/', f'pin_file = "{first}/hsm/')
        config = config.replace('softhsm_conf = "hsm/', f'softhsm_conf = "{first}/hsm/')
        (second / "idmint.toml").write_text(config)
        a, b = _start(first, tmp_path, "a"), _start(second, tmp_path, "b")
        try:
            yield a, b, url
        finally:
            for server in (a, b):
                server.process.terminate()
                server.process.wait(timeout=20)


def _kids(server: Server) -> set[str]:
    _, _, jwks = server.request("GET", "/v1/jwks")
    return {k["kid"] for k in jwks["keys"]}


def test_rotation_on_one_replica_is_seen_by_the_other(
    replicas: tuple[Server, Server, str],
) -> None:
    a, b, url = replicas
    assert _kids(a) == _kids(b) and len(_kids(a)) == 1  # one shared JWT authority, not one each
    env = {**_environment(), "IDMINT_DATABASE_URL": url}

    def prepare() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*IDMINT, "authority", "prepare", "jwt", "--data-dir", str(a.data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    racers = [prepare(), prepare()]
    results = []
    for racer in racers:
        _, err = racer.communicate(timeout=60)
        results.append((racer.returncode, err))
    assert sorted(code for code, _ in results) == [0, 1], results
    assert any("already waiting" in err or "at the same moment" in err for _, err in results), (
        results
    )
    # Published by A's CLI; each replica's workers see it within cache_seconds
    # (1 s by default). Waiting for B alone and then reading A once raced A's
    # cache (seen in CI: B had both keys, A's worker still one).
    began = time.monotonic()
    while True:
        seen_a, seen_b = _kids(a), _kids(b)
        if len(seen_a) == 2 and len(seen_b) == 2:
            break
        assert time.monotonic() - began < 10, f"not seen by both replicas: {seen_a} {seen_b}"
        time.sleep(0.1)
    assert seen_a == seen_b


def test_svid_from_one_replica_verifies_with_the_other(
    replicas: tuple[Server, Server, str],
) -> None:
    a, b, _ = replicas
    key, svid = a.x509_by_token("spiffe://example.org/replica/web")
    _, _, bundle = b.request("GET", "/v1/bundle?format=pem")
    assert bundle.decode() == svid["bundle_pem"]
    from idmint.pop import make_proof

    csr = csr_pem(ec.generate_private_key(ec.SECP256R1()))
    proof = make_proof(svid["chain_pem"], key, "x509-renew", csr.encode())
    status, _, renewed = b.request("POST", "/v1/svid/x509/renew", {"csr": csr, "proof": proof})
    assert status == 201, renewed  # B renews what A issued
    # A join token is single use across replicas.
    a.entry("spiffe://example.org/replica/once", ["join_token:any:true"])
    token = a.join_token("spiffe://example.org/replica/once")
    body = {"attestation": {"type": "join_token", "token": token}, "csr": csr}
    assert a.request("POST", "/v1/svid/x509", body)[0] == 201
    assert b.request("POST", "/v1/svid/x509", body)[0] == 401
