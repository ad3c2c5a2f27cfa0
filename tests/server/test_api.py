"""The HTTP API through a real gunicorn server: attestation, issuance, renewal, admin auth."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.attestation.x509pop import sign_nonce
from idmint.pop import make_proof
from tests.server.conftest import (
    Server,
    _idmint,
    bootstrap_leaf,
    clean_env,
    csr_pem,
    init_data_dir,
)
from tests.tls import context, handshake, write_svid


def _problem(status: int, headers: dict[str, str], body: Any, expected: int, text: str) -> None:
    assert status == expected, body
    assert headers["content-type"].startswith("application/problem+json")
    assert body["status"] == expected and text in body["detail"], body["detail"]


def test_join_token_svids_make_an_mtls_pair(server: Server, tmp_path: Path) -> None:
    web_key, web = server.x509_by_token("spiffe://example.org/http/web")
    api_key, api = server.x509_by_token("spiffe://example.org/http/api")
    assert web["spiffe_id"] == "spiffe://example.org/http/web"
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(web["bundle_pem"])
    server_ctx = context(
        ssl.PROTOCOL_TLS_SERVER,
        *write_svid(tmp_path, "api", api["chain_pem"], api_key),
        str(bundle),
    )
    client_ctx = context(
        ssl.PROTOCOL_TLS_CLIENT,
        *write_svid(tmp_path, "web", web["chain_pem"], web_key),
        str(bundle),
    )
    assert handshake(server_ctx, client_ctx) == (web["spiffe_id"], api["spiffe_id"])


def test_join_token_is_single_use_under_50_parallel_requests(server: Server) -> None:
    spiffe_id = "spiffe://example.org/http/race"
    server.entry(spiffe_id, ["join_token:any:true"])
    token = server.join_token(spiffe_id)
    key = ec.generate_private_key(ec.SECP256R1())
    request = {"attestation": {"type": "join_token", "token": token}, "csr": csr_pem(key)}
    statuses: list[int] = []
    start = threading.Barrier(50)

    def attempt() -> None:
        start.wait()
        status, _, _ = server.request("POST", "/v1/svid/x509", request)
        statuses.append(status)

    threads = [threading.Thread(target=attempt) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [401] * 49


def test_pipeline_token_becomes_a_jwt_svid_valid_through_oidc_discovery(server: Server) -> None:
    server.entry(
        "spiffe://example.org/ci/deploy",
        ["oidc:ci:repository:org/app"],
        audiences=["https://vault.example.org"],
    )
    ci_token = server.ci.token(
        server.ci.claims(
            "idmint",
            sub="repo:org/app:ref:refs/heads/main",
            repository="org/app",
            ref="refs/heads/main",
        )
    )
    status, _, body = server.request(
        "POST",
        "/v1/svid/jwt",
        {
            "attestation": {"type": "oidc", "token": ci_token},
            "audience": "https://vault.example.org",
        },
    )
    assert status == 201, body
    _, _, discovery = server.request("GET", "/.well-known/openid-configuration")
    assert discovery["issuer"] == server.url
    path = discovery["jwks_uri"].removeprefix(server.url)
    _, _, jwks = server.request("GET", path)
    header = jwt.get_unverified_header(body["token"])
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]].key
    claims = jwt.decode(
        body["token"],
        key,
        algorithms=[header["alg"]],
        audience="https://vault.example.org",
        issuer=discovery["issuer"],
    )
    assert claims["sub"] == "spiffe://example.org/ci/deploy"


@pytest.fixture(scope="module")
def refusals_entry(server: Server) -> dict[str, Any]:
    """One entry for every case below (a twin of it would be refused with 409)."""
    return server.entry("spiffe://example.org/ci/refusals", ["oidc:ci:repository:org/app"])


@pytest.mark.parametrize(
    ("case", "status", "text"),
    [
        ("expired", 401, "expired"),
        ("wrong audience", 401, "does not include 'idmint'"),
        ("wrong issuer", 401, "is not a configured OIDC issuer"),
        ("unsigned", 401, "algorithm 'none' is not allowed"),
        ("other key", 401, "signature does not verify"),
        ("no matching entry", 403, "no enabled, unexpired registration entry"),
    ],
)
def test_bad_pipeline_tokens_are_refused(
    refusals_entry: dict[str, Any], server: Server, case: str, status: int, text: str
) -> None:
    ci = server.ci
    claims = ci.claims("idmint", repository="org/app")
    token = ci.token(claims)
    if case == "expired":
        token = ci.token({**claims, "iat": claims["iat"] - 900, "exp": claims["iat"] - 600})
    elif case == "wrong audience":
        token = ci.token({**claims, "aud": "someone-else"})
    elif case == "wrong issuer":
        token = ci.token({**claims, "iss": "https://evil.example"})
    elif case == "unsigned":
        token = ci.token(claims, alg="none")
    elif case == "other key":
        from tests.server.conftest import TokenIssuer

        token = TokenIssuer(ci.issuer, kid=ci.kid).token(claims)
    elif case == "no matching entry":
        token = ci.token({**claims, "repository": "org/other"})
    got, headers, body = server.request(
        "POST", "/v1/svid/jwt", {"attestation": {"type": "oidc", "token": token}, "audience": "a"}
    )
    _problem(got, headers, body, status, text)


def test_replayed_pipeline_token_is_refused(server: Server) -> None:
    server.entry("spiffe://example.org/ci/replay", ["oidc:ci:repository:org/replay"])
    token = server.ci.token(server.ci.claims("idmint", repository="org/replay"))
    request = {"attestation": {"type": "oidc", "token": token}, "audience": "a"}
    assert server.request("POST", "/v1/svid/jwt", request)[0] == 201
    _problem(*server.request("POST", "/v1/svid/jwt", request), 401, "already used")


def test_kubernetes_projected_token(server: Server) -> None:
    server.entry("spiffe://example.org/k8s/prod/web", ["k8s:ns:prod", "k8s:sa:web"])
    extra: dict[str, Any] = {
        "sub": "system:serviceaccount:prod:web",
        "kubernetes.io": {
            "namespace": "prod",
            "serviceaccount": {"name": "web", "uid": "u1"},
            "pod": {"name": "web-1", "uid": "p1"},
        },
    }
    claims = server.k8s.claims("idmint", **extra)
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = server.request(
        "POST",
        "/v1/svid/x509",
        {
            "attestation": {"type": "k8s_psat", "token": server.k8s.token(claims)},
            "csr": csr_pem(key),
        },
    )
    assert status == 201, body
    assert body["spiffe_id"] == "spiffe://example.org/k8s/prod/web"
    wrong = server.k8s.token({**claims, "aud": "kubernetes", "jti": "other"})
    got, headers, problem = server.request(
        "POST",
        "/v1/svid/x509",
        {"attestation": {"type": "k8s_psat", "token": wrong}, "csr": csr_pem(key)},
    )
    _problem(got, headers, problem, 401, "does not include 'idmint'")


def test_x509pop_over_a_server_nonce(server: Server) -> None:
    node_key, node_pem = bootstrap_leaf(server.bootstrap_key, server.bootstrap_cert, "node-7")
    server.entry("spiffe://example.org/node/7", ["x509pop:subject:cn:node-7"])
    _, _, nonce = server.request("GET", "/v1/nonce")
    evidence = {
        "type": "x509pop",
        "nonce": nonce["nonce"],
        "chain": node_pem,
        "signature": base64.b64encode(sign_nonce(node_key, nonce["nonce"])).decode(),
    }
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = server.request(
        "POST", "/v1/svid/x509", {"attestation": evidence, "csr": csr_pem(key)}
    )
    assert status == 201, body
    assert body["spiffe_id"] == "spiffe://example.org/node/7"
    _problem(
        *server.request("POST", "/v1/svid/x509", {"attestation": evidence, "csr": csr_pem(key)}),
        401,
        "already used",
    )


def test_renewal_by_proof_of_possession(server: Server) -> None:
    spiffe_id = "spiffe://example.org/http/renew"
    key, first = server.x509_by_token(spiffe_id)
    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_pem(new_key)
    request = {"csr": csr, "proof": make_proof(first["chain_pem"], key, "x509-renew", csr.encode())}
    status, _, renewed = server.request("POST", "/v1/svid/x509/renew", request)
    assert status == 201, renewed
    assert renewed["spiffe_id"] == spiffe_id and renewed["serial"] != first["serial"]
    leaf = x509.load_pem_x509_certificate(renewed["chain_pem"].encode())
    assert leaf.public_key() == new_key.public_key()
    # The same request again: captured and replayed.
    _problem(*server.request("POST", "/v1/svid/x509/renew", request), 401, "already used")
    # A proof for another CSR does not carry over.
    forged = {"csr": csr_pem(ec.generate_private_key(ec.SECP256R1())), "proof": request["proof"]}
    _problem(*server.request("POST", "/v1/svid/x509/renew", forged), 401, "does not verify")


def test_svid_of_a_disabled_entry_cannot_renew(server: Server) -> None:
    spiffe_id = "spiffe://example.org/http/disabled"
    key, first = server.x509_by_token(spiffe_id)
    (entry,) = [
        e for e in server.admin("GET", "/v1/entries")["entries"] if e["spiffe_id"] == spiffe_id
    ]
    server.admin("PATCH", f"/v1/entries/{entry['id']}", {"disabled": True})
    csr = csr_pem(ec.generate_private_key(ec.SECP256R1()))
    request = {"csr": csr, "proof": make_proof(first["chain_pem"], key, "x509-renew", csr.encode())}
    _problem(*server.request("POST", "/v1/svid/x509/renew", request), 403, "no enabled, unexpired")


ADMIN_ROUTES = [
    ("GET", "/v1/entries", None),
    (
        "POST",
        "/v1/entries",
        {
            "spiffe_id": "spiffe://example.org/x",
            "selectors": ["a:b"],
            "owner": "o",
            "expires_at": "2099-01-01T00:00:00Z",
        },
    ),
    ("GET", "/v1/entries/some-id", None),
    ("PATCH", "/v1/entries/some-id", {"disabled": True}),
    ("DELETE", "/v1/entries/some-id", None),
    ("POST", "/v1/join-tokens", {"spiffe_id": "spiffe://example.org/x", "ttl_seconds": 600}),
    ("GET", "/v1/join-tokens", None),
    ("DELETE", "/v1/join-tokens/some-id", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES]
)
def test_admin_routes_refuse_anonymous_and_non_admin_callers(
    server: Server, method: str, path: str, body: Any
) -> None:
    before = server.admin("GET", "/v1/entries")["entries"]
    _problem(*server.request(method, path, body), 401, "admin operations need")
    key, svid = server.x509_by_token(f"spiffe://example.org/nonadmin/{method.lower()}{len(path)}")
    raw = b"" if body is None else json.dumps(body).encode()
    header = server.proof_header(svid["chain_pem"], key, method, path, raw)
    status, headers, problem = server.request(
        method,
        path,
        raw=raw if body is not None else None,
        headers={"X-Idmint-Proof": header, "Content-Type": "application/json"},
    )
    _problem(status, headers, problem, 403, "is not an admin identity")
    after = server.admin("GET", "/v1/entries")["entries"]
    assert len(after) == len(before) + 1  # only the test's own entry, nothing from the refusals


def test_admin_svid_may_administer(server: Server) -> None:
    spiffe_id = "spiffe://example.org/ops/admin"
    key, svid = server.x509_by_token(spiffe_id, admin=True)
    header = server.proof_header(svid["chain_pem"], key, "GET", "/v1/entries", b"")
    status, _, body = server.request("GET", "/v1/entries", headers={"X-Idmint-Proof": header})
    assert status == 200 and any(e["spiffe_id"] == spiffe_id for e in body["entries"])
    # The same proof header again is a replay.
    _problem(
        *server.request("GET", "/v1/entries", headers={"X-Idmint-Proof": header}),
        401,
        "already used",
    )


def test_bundle_metrics_and_health(server: Server) -> None:
    server.x509_by_token("spiffe://example.org/http/metrics")
    status, _, bundle = server.request("GET", "/v1/bundle")
    assert status == 200 and {k["use"] for k in bundle["keys"]} == {"x509-svid", "jwt-svid"}
    status, _, pem = server.request("GET", "/v1/bundle?format=pem")
    assert status == 200 and pem.startswith(b"-----BEGIN CERTIFICATE-----")
    status, _, metrics = server.request("GET", "/metrics")
    assert status == 200
    text = metrics.decode()
    assert (
        "idmint_issuance_total" in text
        and 'idmint_authority_expiry_seconds{kind="intermediate"}' in text
    )
    assert server.request("GET", "/healthz")[0] == 200


def test_request_size_limit_and_bad_json(server: Server) -> None:
    status, headers, _ = server.request("POST", "/v1/svid/x509", raw=b"{" + b" " * 70_000 + b"}")
    assert status == 413 and headers["content-type"].startswith("application/problem+json")
    _problem(
        *server.request("POST", "/v1/svid/x509", raw=b"not json"), 400, "must be a JSON object"
    )


def test_a_port_in_use_is_refused_before_anything_is_written(
    server: Server, tmp_path: Path
) -> None:
    # Workers bind with SO_REUSEPORT; without the check a second server on
    # the same port would silently take half of the first one's traffic.
    data = init_data_dir(tmp_path / "second", "second.test")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    with socket.socket() as plain:  # and a listener that is not idmint's
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        for port in (server.port, plain.getsockname()[1]):
            refused = subprocess.run(
                [*_idmint(), "server", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                env=clean_env(),
                timeout=60,
            )
            assert refused.returncode != 0
            assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    assert server.request("GET", "/healthz")[0] == 200


def test_gunicorn_control_socket_stays_in_the_data_directory(server: Server) -> None:
    control = server.data_dir / "server" / "gunicorn.ctl"
    deadline = time.monotonic() + 10
    while not control.exists():
        assert time.monotonic() < deadline, "no control socket in the data directory"
        time.sleep(0.1)
    assert stat.S_ISSOCK(control.stat().st_mode)
    assert stat.S_IMODE(control.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("attestation", "says"),
    [
        ("join_token", "'attestation' must be an object with a 'type', one of: join_token"),
        ({"token": "x"}, "'attestation' must be an object with a 'type', one of: join_token"),
        ({"type": "nope"}, "attestation type 'nope' is unknown; this server accepts: join_token"),
    ],
)
def test_malformed_attestation_is_a_bad_request(
    server: Server, attestation: Any, says: str
) -> None:
    status, _, problem = server.request(
        "POST",
        "/v1/svid/x509",
        {"attestation": attestation, "csr": csr_pem(ec.generate_private_key(ec.SECP256R1()))},
    )
    assert status == 400, problem
    assert says in problem["detail"] and "[" not in problem["detail"], problem


def test_an_unknown_bundle_format_names_the_query_parameter(server: Server) -> None:
    status, _, problem = server.request("GET", "/v1/bundle?format=xml")
    assert status == 400
    assert "query parameter" in problem["title"] and "?format=xml" in problem["detail"], problem
