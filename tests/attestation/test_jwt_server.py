"""Issuer-signed tokens with hostile claims, through the real server.

Each token here is signed by the test issuer's own key, so only the claims
can refuse it; each is checked against a control that the same issuer's
well-formed token is accepted for the same entry. Before PyJWT and the
strict JSON reading: ``"exp": NaN`` gave a 500, and ``iat: NaN``, a missing
``iat``, Infinity and duplicate claims were accepted.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from tests.server.conftest import Server, TokenIssuer, csr_pem

YEAR = 365 * 24 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(issuer: TokenIssuer, payload: str) -> str:
    """A token over exactly this payload text (json.dumps cannot write duplicates)."""
    head = _b64(json.dumps({"alg": "RS256", "kid": issuer.kid, "typ": "JWT"}).encode())
    body = _b64(payload.encode())
    signature = issuer.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{_b64(signature)}"


def _dumped(claims: dict[str, Any]) -> str:
    return json.dumps(claims)  # allow_nan: writes NaN and Infinity as Python does


def _duplicate(claims: dict[str, Any], name: str, first: Any) -> str:
    """``claims`` with ``name`` given twice: ``first``, then the good value."""
    text = json.dumps({name: first, **{k: v for k, v in claims.items() if k != name}})
    return text[:-1] + f", {json.dumps(name)}: {json.dumps(claims[name])}}}"


def _with(**changes: Any) -> Callable[[dict[str, Any]], str]:
    def make(claims: dict[str, Any]) -> str:
        changed = {**claims, **changes}
        return _dumped({k: v for k, v in changed.items() if v is not _DROP})

    return make


_DROP = object()
NOW = int(time.time())

#: name -> (payload from good claims, text the problem's detail must hold)
HOSTILE: dict[str, tuple[Callable[[dict[str, Any]], str], str]] = {
    "exp NaN": (_with(exp=math.nan), "NaN is not a JSON number"),
    "iat NaN, exp in two hours": (
        _with(iat=math.nan, exp=NOW + 7200),
        "NaN is not a JSON number",
    ),
    "no iat, exp in ten years": (_with(iat=_DROP, exp=NOW + 10 * YEAR), "'iat'"),
    "iat now, exp in ten years": (_with(exp=NOW + 10 * YEAR), "exceeds"),
    "exp Infinity": (_with(exp=math.inf), "Infinity is not a JSON number"),
    "exp -Infinity": (_with(exp=-math.inf), "-Infinity is not a JSON number"),
    "iat -Infinity": (_with(iat=-math.inf), "-Infinity is not a JSON number"),
    "exp 1e400": (lambda c: _dumped(c).replace(f'"exp": {c["exp"]}', '"exp": 1e400'), "too large"),
    "exp a 400-digit integer": (_with(exp=10**400), "out of range"),
    "exp as a string": (_with(exp=str(NOW + 300)), "'exp' is not a number"),
    "exp true": (_with(exp=True), "'exp' is not a number"),
    "nbf as a list": (_with(nbf=[NOW]), "'nbf' is not a number"),
    "iat in the future": (_with(iat=NOW + 3600, exp=NOW + 3900), "not valid yet"),
    "duplicate aud": (lambda c: _duplicate(c, "aud", "someone-else"), "'aud' twice"),
    "duplicate exp": (lambda c: _duplicate(c, "exp", NOW - 3600), "'exp' twice"),
    "duplicate iss": (lambda c: _duplicate(c, "iss", "https://evil.example"), "'iss' twice"),
}


def _problem(status: int, headers: dict[str, str], body: Any, text: str) -> None:
    assert status == 401, body
    assert headers["content-type"].startswith("application/problem+json")
    assert body["status"] == 401 and body["type"].endswith("/attestation-failed"), body
    assert text in body["detail"], body["detail"]


def _oidc(server: Server, token: str) -> tuple[int, dict[str, str], Any]:
    return server.request(
        "POST", "/v1/svid/jwt", {"attestation": {"type": "oidc", "token": token}, "audience": "a"}
    )


def _k8s(server: Server, token: str) -> tuple[int, dict[str, str], Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    return server.request(
        "POST",
        "/v1/svid/x509",
        {"attestation": {"type": "k8s_psat", "token": token}, "csr": csr_pem(key)},
    )


def _oidc_claims(server: Server) -> dict[str, Any]:
    return server.ci.claims("idmint", repository="org/hostile")


def _k8s_claims(server: Server) -> dict[str, Any]:
    pod = {"name": "web-1", "uid": uuid.uuid4().hex}
    info = {"namespace": "hostile", "serviceaccount": {"name": "web", "uid": "u1"}, "pod": pod}
    claims = server.k8s.claims("idmint", sub="system:serviceaccount:hostile:web")
    return {**claims, "kubernetes.io": info}


@pytest.fixture(scope="module")
def entries(server: Server) -> None:
    server.entry("spiffe://example.org/hostile/ci", ["oidc:ci:repository:org/hostile"])
    server.entry("spiffe://example.org/hostile/k8s", ["k8s:ns:hostile", "k8s:sa:web"])


def test_the_well_formed_tokens_are_accepted(server: Server, entries: None) -> None:
    # The control: what the cases below change is all that refuses them.
    status, _, body = _oidc(server, signed(server.ci, _dumped(_oidc_claims(server))))
    assert status == 201, body
    status, _, body = _k8s(server, signed(server.k8s, _dumped(_k8s_claims(server))))
    assert status == 201, body


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_oidc_claims_are_401(server: Server, entries: None, case: str) -> None:
    payload, text = HOSTILE[case]
    _problem(*_oidc(server, signed(server.ci, payload(_oidc_claims(server)))), text)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_k8s_claims_are_401(server: Server, entries: None, case: str) -> None:
    payload, text = HOSTILE[case]
    if case == "iat now, exp in ten years":
        text = "exceeds the 172800s"
    _problem(*_k8s(server, signed(server.k8s, payload(_k8s_claims(server)))), text)


def test_a_duplicate_selector_claim_is_refused(server: Server, entries: None) -> None:
    # Two readers of one token must never see different repositories.
    claims = _oidc_claims(server)
    token = signed(server.ci, _duplicate(claims, "repository", "org/other"))
    _problem(*_oidc(server, token), "'repository' twice")


def test_a_duplicate_header_member_is_refused(server: Server, entries: None) -> None:
    claims = _oidc_claims(server)
    head = f'{{"alg": "none", "kid": "{server.ci.kid}", "alg": "RS256"}}'
    body = _b64(_dumped(claims).encode())
    signing_input = f"{_b64(head.encode())}.{body}"
    signature = server.ci.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    _problem(*_oidc(server, f"{signing_input}.{_b64(signature)}"), "'alg' twice")


def test_unreadable_issuer_keys_are_503_not_the_tokens_fault(server: Server, entries: None) -> None:
    # The JWKS file is read again when it changes; while it is gone the
    # server cannot check any k8s token, which is no reason to call it bad.
    jwks = server.data_dir / "k8s-jwks.json"
    aside = jwks.with_suffix(".aside")
    jwks.rename(aside)
    try:
        status, headers, body = _k8s(server, signed(server.k8s, _dumped(_k8s_claims(server))))
    finally:
        aside.rename(jwks)
    assert status == 503, body
    assert headers["content-type"].startswith("application/problem+json")
    assert body["type"].endswith("/attestation-unavailable")
    assert "k8s-jwks.json" in body["detail"]
    status, _, body = _k8s(server, signed(server.k8s, _dumped(_k8s_claims(server))))
    assert status == 201, body
