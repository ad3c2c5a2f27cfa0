"""A full root rotation while 20 workloads keep working: zero failures.

Each workload loops: renew its X509-SVID by proof of possession (new key),
fetch the bundle, complete an mTLS handshake with a peer using only that
freshly fetched bundle as trust, and get a JWT-SVID that the server's
validation endpoint accepts. Meanwhile an operator prepares a new root,
activates it, moves the intermediate and the JWT key onto it, and finally
removes the old root. Every failure of any step is counted; none may occur.
"""

from __future__ import annotations

import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.pop import jwt_payload, make_proof
from tests.server.conftest import Server, csr_pem
from tests.tls import context, handshake, write_svid

pytestmark = pytest.mark.slow  # root rotation under load: minutes of traffic


WORKLOADS = 20


def _idmint(server: Server, *args: str) -> list[dict[str, Any]]:
    return server.authority(*args)


def test_root_rotation_with_twenty_busy_workloads(server: Server) -> None:
    holders: list[tuple[Any, dict[str, Any]]] = [
        server.x509_by_token(f"spiffe://example.org/load/w{i}") for i in range(WORKLOADS)
    ]
    failures: list[str] = []
    rounds = [0] * WORKLOADS
    stop = threading.Event()
    scratch = Path(tempfile.mkdtemp())

    def work(index: int) -> None:
        key, svid = holders[index]
        folder = scratch / f"w{index}"
        folder.mkdir()
        while not stop.is_set():
            try:
                new_key = ec.generate_private_key(ec.SECP256R1())
                csr = csr_pem(new_key)
                proof = make_proof(svid["chain_pem"], key, "x509-renew", csr.encode())
                status, _, renewed = server.request(
                    "POST", "/v1/svid/x509/renew", {"csr": csr, "proof": proof}
                )
                if status != 201:
                    failures.append(f"w{index} renew {status}: {renewed}")
                    continue
                key, svid = new_key, renewed
                _, _, bundle_pem = server.request("GET", "/v1/bundle?format=pem")
                bundle = folder / "bundle.pem"
                bundle.write_bytes(bundle_pem)
                me = write_svid(folder, "me", svid["chain_pem"], key)
                peer_key, peer = holders[(index + 1) % WORKLOADS]
                them = write_svid(folder, "peer", peer["chain_pem"], peer_key)
                handshake(
                    context(ssl.PROTOCOL_TLS_SERVER, *them, str(bundle)),
                    context(ssl.PROTOCOL_TLS_CLIENT, *me, str(bundle)),
                )
                holders[index] = (key, svid)
                audience = f"peer-{index}"
                jwt_proof = make_proof(svid["chain_pem"], key, "jwt-svid", jwt_payload([audience]))
                status, _, issued = server.request(
                    "POST", "/v1/svid/jwt", {"proof": jwt_proof, "audience": audience}
                )
                if status != 201:
                    failures.append(f"w{index} jwt {status}: {issued}")
                    continue
                status, _, valid = server.request(
                    "POST",
                    "/v1/svid/jwt/validate",
                    {"token": issued["token"], "audience": audience},
                )
                if status != 200:
                    failures.append(f"w{index} validate {status}: {valid}")
                rounds[index] += 1
            except Exception as exc:  # every failure counts
                failures.append(f"w{index} {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKLOADS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        old_root = next(a for a in _idmint(server, "list") if a["kind"] == "root")
        _idmint(server, "prepare", "root")
        time.sleep(2)  # the new root is in every bundle before anything chains to it
        _idmint(server, "activate", "root")
        _idmint(server, "prepare", "intermediate")
        _idmint(server, "activate", "intermediate")
        _idmint(server, "prepare", "jwt")
        time.sleep(2)
        _idmint(server, "activate", "jwt")
        # Wait until every workload has renewed under the new intermediate
        # (twice, so peers hold new SVIDs too), then remove the old root.
        marks = list(rounds)
        deadline = time.monotonic() + 60
        while any(r < m + 3 for r, m in zip(rounds, marks, strict=True)):
            assert time.monotonic() < deadline, f"workloads stalled: {rounds}"
            time.sleep(0.2)
        _idmint(server, "revoke", "root", "--id", str(old_root["id"]))
        marks = list(rounds)
        while any(r < m + 2 for r, m in zip(rounds, marks, strict=True)):
            assert time.monotonic() < deadline, f"workloads stalled: {rounds}"
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []
    assert min(rounds) >= 5, rounds
    states = {(a["kind"], a["state"]) for a in _idmint(server, "list")}
    assert ("root", "removed") in states and ("root", "active") in states
