"""JWT verification (attestation/jwt.py) and issuer keys (attestation/jwks.py), in process.

Tokens are made with PyJWT's encoder; the discovery document and JWKS are
served over real HTTP on loopback, so PyJWKClient's fetching and caching
run as they do against GitHub or GitLab.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import josepy
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idmint.attestation import jwks
from idmint.attestation.errors import AttestationFailed, AttestationUnavailable
from idmint.attestation.jwks import JWKSSource
from idmint.attestation.jwt import strict_json, unverified_claims, verify_jwt
from idmint.errors import ConfigError

ISSUER = "https://ci.example.test"


@dataclass
class Issuer:
    key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    alg: str = "ES256"

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        made: dict[str, Any] = json.loads(algorithm.to_jwk(self.key.public_key()))
        return {**made, "kid": self.kid, "use": "sig"}

    def token(self, lifetime: int = 300, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": "idmint", "iat": now, "exp": now + lifetime, **claims}
        return jwt.encode(body, self.key, algorithm=self.alg, headers={"kid": self.kid})


def _file_source(tmp_path: Path, *issuers: Issuer) -> JWKSSource:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [i.jwk() for i in issuers]}))
    return JWKSSource(ISSUER, jwks_file=str(path))


def test_a_good_token_verifies(tmp_path: Path) -> None:
    issuer = Issuer()
    verified = verify_jwt(issuer.token(sub="x"), _file_source(tmp_path, issuer), ISSUER, "idmint")
    assert verified.claims["sub"] == "x"
    assert verified.header["kid"] == issuer.kid


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        ("RS256", lambda: rsa.generate_private_key(65537, 2048)),
        ("PS256", lambda: rsa.generate_private_key(65537, 2048)),
        ("ES384", lambda: ec.generate_private_key(ec.SECP384R1())),
    ],
)
def test_every_allowed_algorithm(tmp_path: Path, alg: str, key: Any) -> None:
    # PS256 with an RSA key whose JWK has no "alg": PyJWK alone would pin RS256.
    issuer = Issuer(key=key(), alg=alg)
    source = _file_source(tmp_path, issuer)
    jwk = json.loads((tmp_path / "jwks.json").read_text())["keys"][0]
    assert "alg" not in jwk
    assert verify_jwt(issuer.token(), source, ISSUER, "idmint").header["alg"] == alg


def test_a_p256_key_cannot_verify_an_es384_token(tmp_path: Path) -> None:
    issuer = Issuer()
    other = Issuer(key=ec.generate_private_key(ec.SECP384R1()), alg="ES384", kid=issuer.kid)
    with pytest.raises(AttestationFailed, match="does not fit the key"):
        verify_jwt(other.token(), _file_source(tmp_path, issuer), ISSUER, "idmint")


def test_hmac_and_none_are_refused(tmp_path: Path) -> None:
    # RFC 8725 section 2.1: an HS256 "signature" keyed with the public key.
    issuer = Issuer(key=rsa.generate_private_key(65537, 2048), alg="RS256")
    body = issuer.token().split(".")[1]
    source = _file_source(tmp_path, issuer)
    for alg in ("HS256", "none"):
        head = josepy.b64.b64encode(json.dumps({"alg": alg, "kid": issuer.kid}).encode())
        with pytest.raises(AttestationFailed, match=f"'{alg}' is not allowed"):
            verify_jwt(f"{head.decode()}.{body}.AAAA", source, ISSUER, "idmint")


def test_strict_json_refuses_what_json_loads_takes() -> None:
    for raw, reason in [
        (b'{"exp": NaN}', "NaN is not a JSON number"),
        (b'{"exp": Infinity}', "Infinity is not a JSON number"),
        (b'{"exp": 1e999}', "too large"),
        (b'{"a": 1, "a": 2}', "'a' twice"),
        (b'{"o": {"b": 1, "b": 1}}', "'b' twice"),
    ]:
        json.loads(raw)  # what PyJWT would have read
        with pytest.raises(AttestationFailed, match=reason):
            strict_json(raw, "payload")
    with pytest.raises(AttestationFailed, match="not a JSON object"):
        strict_json(b"[1]", "payload")
    assert strict_json(b'{"exp": 1.5, "n": [1, 2]}', "payload") == {"exp": 1.5, "n": [1, 2]}


@pytest.mark.parametrize(
    ("token", "text"),
    [
        (None, "compact JWT of at most"),
        ("a.b", "three dot-separated parts"),
        ("x" * 20000, "compact JWT of at most"),
        ("eyJhbGciOiJFUzI1NiJ9.é.AA", "payload is not base64url"),
        ("eyJhbGciOiJFUzI1NiJ9.e.AA", "payload is not base64url"),
        ("W10.e30.AA", "header is not a JSON object"),
    ],
)
def test_malformed_tokens(tmp_path: Path, token: Any, text: str) -> None:
    with pytest.raises(AttestationFailed, match=text):
        verify_jwt(token, _file_source(tmp_path, Issuer()), ISSUER, "idmint")


def test_an_unknown_kid_is_the_tokens_fault(tmp_path: Path) -> None:
    with pytest.raises(AttestationFailed, match="is not in the JWKS of"):
        verify_jwt(Issuer().token(), _file_source(tmp_path, Issuer()), ISSUER, "idmint")


def test_a_replaced_jwks_file_is_read_again(tmp_path: Path) -> None:
    old, new = Issuer(), Issuer()
    source = _file_source(tmp_path, old)
    verify_jwt(old.token(), source, ISSUER, "idmint")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [new.jwk(), {"kty": "oct"}]}))
    verify_jwt(new.token(), source, ISSUER, "idmint")
    with pytest.raises(AttestationFailed, match="is not in the JWKS"):
        verify_jwt(old.token(), source, ISSUER, "idmint")


def test_an_unreadable_jwks_file_is_ours_not_the_tokens(tmp_path: Path) -> None:
    issuer = Issuer()
    source = JWKSSource(ISSUER, jwks_file=str(tmp_path / "missing.json"))
    with pytest.raises(AttestationUnavailable, match="cannot read the JWKS file"):
        verify_jwt(issuer.token(), source, ISSUER, "idmint")
    (tmp_path / "empty.json").write_text('{"keys": []}')
    source = JWKSSource(ISSUER, jwks_file=str(tmp_path / "empty.json"))
    with pytest.raises(AttestationUnavailable, match="holds no usable key"):
        verify_jwt(issuer.token(), source, ISSUER, "idmint")


def test_a_source_needs_a_file_or_discovery() -> None:
    with pytest.raises(ConfigError, match="give jwks_file or discovery"):
        JWKSSource(ISSUER)


class _Boom(RuntimeError):
    pass


class _BrokenKeys:
    def signing_key(self, kid: str) -> jwt.PyJWK:
        raise _Boom("a bug in a key source")


def test_a_bug_is_not_reported_as_a_bad_token() -> None:
    # Before: any exception while verifying became "signature does not verify".
    with pytest.raises(_Boom):
        verify_jwt(Issuer().token(), _BrokenKeys(), ISSUER, "idmint")


def test_lifetime_and_required_iat(tmp_path: Path) -> None:
    issuer = Issuer()
    source = _file_source(tmp_path, issuer)
    hour = timedelta(hours=1)
    with pytest.raises(AttestationFailed, match="exceeds the 3600s"):
        verify_jwt(issuer.token(lifetime=7200), source, ISSUER, "idmint", max_lifetime=hour)
    now = int(time.time())
    no_iat = jwt.encode(
        {"iss": ISSUER, "aud": "idmint", "exp": now + 60},
        issuer.key,
        algorithm="ES256",
        headers={"kid": issuer.kid},
    )
    assert verify_jwt(no_iat, source, ISSUER, "idmint").claims["exp"] == now + 60
    with pytest.raises(AttestationFailed, match="no 'iat' claim"):
        verify_jwt(no_iat, source, ISSUER, "idmint", max_lifetime=hour)


def test_unverified_claims_are_read_strictly() -> None:
    token = Issuer().token(repository="org/app")
    assert unverified_claims(token)["repository"] == "org/app"


# --- discovery over real HTTP ---------------------------------------------


@dataclass
class Discovery:
    """An OIDC issuer on loopback: discovery document and JWKS, with a request log."""

    url: str
    keys: list[Issuer]
    requests: list[str]
    document: dict[str, Any]


@pytest.fixture
def discovery() -> Iterator[Discovery]:
    state: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served: Discovery = state["served"]
            served.requests.append(self.path)
            if self.path == "/.well-known/openid-configuration":
                body = json.dumps(served.document).encode()
            elif self.path == "/jwks":
                body = json.dumps({"keys": [k.jwk() for k in served.keys]}).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    state["served"] = Discovery(url, [Issuer()], [], {"issuer": url, "jwks_uri": f"{url}/jwks"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["served"]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _token(issuer: Issuer, url: str) -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": url, "aud": "idmint", "iat": now, "exp": now + 300},
        issuer.key,
        algorithm="ES256",
        headers={"kid": issuer.kid},
    )


def test_discovery_fetches_once_and_caches(discovery: Discovery) -> None:
    source = JWKSSource(discovery.url, discovery=True)
    for _ in range(3):
        verify_jwt(_token(discovery.keys[0], discovery.url), source, discovery.url, "idmint")
    assert discovery.requests == ["/.well-known/openid-configuration", "/jwks"]


def test_a_rotated_key_is_fetched_after_the_cooldown(
    discovery: Discovery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jwks, "UNKNOWN_KID_COOLDOWN", 0.0)
    source = JWKSSource(discovery.url, discovery=True)
    verify_jwt(_token(discovery.keys[0], discovery.url), source, discovery.url, "idmint")
    rotated = Issuer()
    discovery.keys.append(rotated)
    verify_jwt(_token(rotated, discovery.url), source, discovery.url, "idmint")
    assert discovery.requests.count("/jwks") == 2


def test_an_unknown_kid_within_the_cooldown_costs_no_fetch(discovery: Discovery) -> None:
    source = JWKSSource(discovery.url, discovery=True)
    verify_jwt(_token(discovery.keys[0], discovery.url), source, discovery.url, "idmint")
    with pytest.raises(AttestationFailed, match="is not in the JWKS"):
        verify_jwt(_token(Issuer(), discovery.url), source, discovery.url, "idmint")
    assert discovery.requests.count("/jwks") == 1


def test_a_discovery_document_naming_another_issuer_is_refused(discovery: Discovery) -> None:
    discovery.document["issuer"] = "https://evil.example"
    source = JWKSSource(discovery.url, discovery=True)
    with pytest.raises(AttestationUnavailable, match=r"names the issuer 'https://evil\.example'"):
        verify_jwt(_token(discovery.keys[0], discovery.url), source, discovery.url, "idmint")


def test_an_unreachable_issuer_is_ours_not_the_tokens(discovery: Discovery) -> None:
    discovery.document["jwks_uri"] = f"{discovery.url}/gone"
    source = JWKSSource(discovery.url, discovery=True)
    with pytest.raises(AttestationUnavailable, match="cannot read the JWKS"):
        verify_jwt(_token(discovery.keys[0], discovery.url), source, discovery.url, "idmint")
    closed = JWKSSource("http://127.0.0.1:9", discovery=True)
    with pytest.raises(AttestationUnavailable, match="cannot fetch the discovery document"):
        verify_jwt(
            _token(discovery.keys[0], "http://127.0.0.1:9"), closed, "http://127.0.0.1:9", "idmint"
        )


# --- a bug in the server is a 500 with a log line -------------------------


@contextlib.contextmanager
def _captured(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """caplog on the "idmint" logger, which the app's logging setup keeps from the root."""
    logger = logging.getLogger("idmint")
    logger.addHandler(caplog.handler)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)


def test_an_unexpected_error_is_a_500_problem_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from idmint.ca.api import create_app
    from idmint.ca.config import CAConfig
    from idmint.hsm.config import HSMConfig

    config = CAConfig(tmp_path, "example.org", "sqlite://", HSMConfig(token_label="unused"))
    app = create_app(config, rate_limit=None)

    @app.get("/bug")
    def bug() -> Any:
        raise _Boom("an attestor's bug")

    with _captured(caplog):
        response = app.test_client().get("/bug")
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 500
    assert "an attestor's bug" not in response.get_data(as_text=True)  # no internals to callers
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is _Boom]
    assert logged, "the traceback is logged"


def test_a_server_fault_in_the_tree_is_a_5xx_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from idmint.ca.api import create_app
    from idmint.ca.config import CAConfig
    from idmint.hsm.config import HSMConfig
    from idmint.hsm.errors import UnsupportedMechanism

    config = CAConfig(tmp_path, "example.org", "sqlite://", HSMConfig(token_label="unused"))
    app = create_app(config, rate_limit=None)

    @app.get("/unavailable")
    def unavailable() -> Any:
        raise AttestationUnavailable("cannot read the JWKS of https://ci.example.test")

    @app.get("/mechanism")
    def mechanism() -> Any:
        raise UnsupportedMechanism("the token does not offer this mechanism", mechanism="X")

    @app.get("/bad")
    def bad() -> Any:
        raise AttestationFailed("token expired")

    client = app.test_client()
    with _captured(caplog):
        got = {path: client.get(path) for path in ("/unavailable", "/mechanism", "/bad")}
    # A refusal is audited before it is answered (ca/api/health.py), which
    # needs the CA service, here without a token: a 503 naming it, not a 401
    # whose audit was silently lost.
    assert [got[p].status_code for p in got] == [503, 500, 503]
    assert got["/bad"].get_json()["type"].endswith("/hsm-token-not-found")
    assert got["/mechanism"].get_json()["type"].endswith("/hsm-unsupported-mechanism")
    messages = [r.getMessage() for r in caplog.records if r.name == "idmint.api"]
    assert any("AttestationUnavailable" in m for m in messages)
    assert any("UnsupportedMechanism" in m for m in messages)
    assert not any("AttestationFailed" in m for m in messages)


def test_a_stale_discovery_document_that_cannot_be_fetched_keeps_the_keys(
    discovery: Discovery,
) -> None:
    source = JWKSSource(discovery.url, discovery=True, refresh_seconds=0.05)
    verify_jwt(_token(discovery.keys[0], discovery.url), source, discovery.url, "idmint")
    discovery.document.clear()  # the issuer's discovery endpoint breaks
    time.sleep(0.1)
    verify_jwt(_token(discovery.keys[0], discovery.url), source, discovery.url, "idmint")
    assert discovery.requests.count("/.well-known/openid-configuration") == 2
