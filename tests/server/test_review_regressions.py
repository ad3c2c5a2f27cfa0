"""Regressions for the findings of the security review (each one reproduced first)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from idmint.pop import jwt_payload, make_proof
from tests.server.conftest import Server, csr_pem

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _other_form(signature_b64: str) -> str:
    """The second valid encoding (r, n - s) of the same ECDSA signature."""
    r, s = decode_dss_signature(base64.b64decode(signature_b64))
    return base64.b64encode(encode_dss_signature(r, P256_ORDER - s)).decode()


def test_malleated_proof_signature_does_not_replay(server: Server) -> None:
    spiffe_id = "spiffe://example.org/review/admin"
    key, svid = server.x509_by_token(spiffe_id, admin=True)
    body = json.dumps({"spiffe_id": spiffe_id, "ttl_seconds": 600}).encode()
    proof = make_proof(svid["chain_pem"], key, "admin", b"POST /v1/join-tokens\n" + body)
    header = base64.b64encode(json.dumps(proof).encode()).decode()
    flipped = {**proof, "signature": _other_form(proof["signature"])}
    flipped_header = base64.b64encode(json.dumps(flipped).encode()).decode()
    headers = {"Content-Type": "application/json"}
    first = server.request(
        "POST", "/v1/join-tokens", raw=body, headers={**headers, "X-Idmint-Proof": header}
    )
    assert first[0] == 201, first[2]
    again = server.request(
        "POST", "/v1/join-tokens", raw=body, headers={**headers, "X-Idmint-Proof": flipped_header}
    )
    assert again[0] == 401 and "already used" in again[2]["detail"]

    jwt_proof = make_proof(svid["chain_pem"], key, "jwt-svid", jwt_payload(["a"]))
    assert server.request("POST", "/v1/svid/jwt", {"proof": jwt_proof, "audience": ["a"]})[0] == 201
    replay = {**jwt_proof, "signature": _other_form(jwt_proof["signature"])}
    status, _, problem = server.request(
        "POST", "/v1/svid/jwt", {"proof": replay, "audience": ["a"]}
    )
    assert status == 401 and "already used" in problem["detail"]
    # The audiences are signed unambiguously: "a,b" is not ["a", "b"].
    joined = make_proof(svid["chain_pem"], key, "jwt-svid", jwt_payload(["a,b"]))
    status, _, problem = server.request(
        "POST", "/v1/svid/jwt", {"proof": joined, "audience": ["a", "b"]}
    )
    assert status == 401 and "does not verify" in problem["detail"]


def test_oidc_token_without_jti_cannot_be_rewritten_and_replayed(server: Server) -> None:
    server.entry("spiffe://example.org/review/ci", ["oidc:ci:repository:org/nojti"])
    claims = server.ci.claims("idmint", repository="org/nojti")
    del claims["jti"]
    token = server.ci.token(claims)
    request = {"attestation": {"type": "oidc", "token": token}, "audience": "a"}
    assert server.request("POST", "/v1/svid/jwt", request)[0] == 201
    head, payload, signature = token.split(".")
    for variant in (f"{head}.{payload}.{signature}!!!!", f"{head}.{payload}.{signature}=="):
        rewritten = {"attestation": {"type": "oidc", "token": variant}, "audience": "a"}
        status, _, problem = server.request("POST", "/v1/svid/jwt", rewritten)
        assert status == 401, problem


NASTY: list[tuple[str, str, Any]] = [
    ("deep JSON", "/v1/svid/x509", b"[" * 60000),
    (
        "huge proof timestamp",
        "/v1/svid/x509/renew",
        {"csr": "x", "proof": {"chain": "x", "timestamp": 10**400, "signature": "AA=="}},
    ),
    (
        "lone surrogate join token",
        "/v1/svid/jwt",
        {"attestation": {"type": "join_token", "token": "\ud800"}, "audience": "a"},
    ),
    (
        "non-ascii nonce",
        "/v1/svid/jwt",
        {
            "attestation": {"type": "x509pop", "nonce": "é", "chain": "x", "signature": "AA=="},
            "audience": "a",
        },
    ),
    (
        "non-ascii OIDC payload",
        "/v1/svid/jwt",
        {"attestation": {"type": "oidc", "token": "eyJhbGciOiJSUzI1NiJ9.é.AA"}, "audience": "a"},
    ),
]


@pytest.mark.parametrize(("name", "path", "body"), NASTY, ids=[n for n, _, _ in NASTY])
def test_hostile_inputs_get_a_4xx_not_a_500(
    server: Server, name: str, path: str, body: Any
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, headers, _ = server.request(
        "POST", path, raw=raw, headers={"Content-Type": "application/json"}
    )
    assert 400 <= status < 500, (name, status)
    assert headers["content-type"].startswith("application/problem+json")


def test_oidc_alg_naming_a_key_of_another_type(server: Server) -> None:
    token = server.ci.token(server.ci.claims("idmint", repository="org/app"), alg="ES256")
    status, _, problem = server.request(
        "POST", "/v1/svid/jwt", {"attestation": {"type": "oidc", "token": token}, "audience": "a"}
    )
    assert status == 401 and "does not fit the key" in problem["detail"]


def test_a_bad_csr_does_not_burn_the_join_token(server: Server) -> None:
    spiffe_id = "spiffe://example.org/review/csr"
    server.entry(spiffe_id, ["join_token:any:true"])
    token = server.join_token(spiffe_id)
    evidence = {"type": "join_token", "token": token}
    status, _, problem = server.request(
        "POST", "/v1/svid/x509", {"attestation": evidence, "csr": "garbage"}
    )
    assert status == 400 and "PKCS#10" in problem["detail"]
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, issued = server.request(
        "POST", "/v1/svid/x509", {"attestation": evidence, "csr": csr_pem(key)}
    )
    assert status == 201, issued


def test_huge_ttls_are_refused_cleanly(server: Server) -> None:
    from idmint.cli.admin_client import AdminAPIError

    with pytest.raises(AdminAPIError, match="outside 1-604800 seconds"):
        server.admin(
            "POST",
            "/v1/join-tokens",
            {"spiffe_id": "spiffe://example.org/x", "ttl_seconds": 10**15},
        )
    with pytest.raises(AdminAPIError, match="outside 1-86400 seconds"):
        server.entry("spiffe://example.org/review/ttl", ["a:b"], x509_ttl_seconds=10**15)
