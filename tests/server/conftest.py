"""A real ``idmint server`` (gunicorn, HTTPS on loopback) for the API tests.

The fixture makes a fresh data directory with ``idmint init``, adds test
issuers to its config (a CI OIDC issuer and a Kubernetes service-account
issuer, each with its own key and a JWKS file; a bootstrap CA for x509pop),
starts the server in a subprocess and waits for ``/readyz``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import josepy
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from idmint.cli.admin_client import call as admin_call
from idmint.pop import make_proof

OIDC_ISSUER = "https://ci.example.test"
K8S_ISSUER = "https://kubernetes.default.svc.cluster.local"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenIssuer:
    """A test-made JWT issuer: its own key, published as a JWKS file."""

    issuer: str
    key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def jwks(self) -> dict[str, Any]:
        jwk = dict(josepy.JWKRSA(key=self.key.public_key()).to_partial_json())
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def token(self, claims: dict[str, Any], alg: str = "RS256", **header: Any) -> str:
        head = _b64(json.dumps({"alg": alg, "kid": self.kid, "typ": "JWT", **header}).encode())
        body = _b64(json.dumps(claims).encode())
        if alg == "none":
            return f"{head}.{body}."
        signature = self.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{_b64(signature)}"

    def claims(self, audience: str, lifetime: int = 300, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            **extra,
        }


def _bootstrap_ca(directory: Path) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bootstrap CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    (directory / "bootstrap-ca.pem").write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
    )
    return key, certificate


def bootstrap_leaf(ca_key: Any, ca_cert: x509.Certificate, cn: str) -> tuple[Any, str]:
    """A node certificate from the bootstrap CA, for x509pop."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.nodes.test")]), False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Server:
    """A running idmint server and helpers to talk to it."""

    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    ci: TokenIssuer
    k8s: TokenIssuer
    bootstrap_key: Any
    bootstrap_cert: x509.Certificate

    @property
    def bundle_file(self) -> str:
        return str(self.data_dir / "server" / "bundle.pem")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        context = ssl.create_default_context(cafile=self.bundle_file)
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context, timeout=30
        )
        try:
            payload = (
                raw if raw is not None else None if body is None else json.dumps(body).encode()
            )
            sent = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, path, body=payload, headers={**sent, **(headers or {})})
            response = connection.getresponse()
            data = response.read()
            response_headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        content_type = response_headers.get("content-type", "")
        parsed: Any = json.loads(data) if "json" in content_type and data else data
        return response.status, response_headers, parsed

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """An admin call over the local Unix socket (peer credentials)."""
        return admin_call(self.data_dir, method, path, body)

    def entry(self, spiffe_id: str, selectors: list[str], **extra: Any) -> dict[str, Any]:
        expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        result: dict[str, Any] = self.admin(
            "POST",
            "/v1/entries",
            {
                "spiffe_id": spiffe_id,
                "selectors": selectors,
                "owner": "tests",
                "expires_at": expires,
                **extra,
            },
        )
        return result

    def svid_x509_command(self, token: str, out: Path, *extra: str) -> list[str]:
        """``idmint svid x509`` against this server with a join token, into ``out``."""
        return [
            *_idmint(),
            "svid",
            "x509",
            "--server",
            self.url,
            "--bundle",
            self.bundle_file,
            "--join-token",
            token,
            "--out",
            str(out),
            *extra,
        ]

    def join_token(self, spiffe_id: str, ttl: int = 600) -> str:
        made = self.admin("POST", "/v1/join-tokens", {"spiffe_id": spiffe_id, "ttl_seconds": ttl})
        return str(made["token"])

    def x509_by_token(
        self, spiffe_id: str, key: Any = None, **entry: Any
    ) -> tuple[Any, dict[str, Any]]:
        """Entry (with ``entry`` fields) + join token + X509-SVID; returns (key, response)."""
        self.entry(spiffe_id, ["join_token:any:true"], **entry)
        key = key or ec.generate_private_key(ec.SECP256R1())
        status, _, body = self.request(
            "POST",
            "/v1/svid/x509",
            {
                "attestation": {"type": "join_token", "token": self.join_token(spiffe_id)},
                "csr": csr_pem(key),
            },
        )
        assert status == 201, body
        return key, body

    def authority(self, *args: str) -> list[dict[str, Any]]:
        """Run ``idmint authority ARGS --output json`` on this server's data directory."""
        done = subprocess.run(
            [*_idmint(), "authority", *args, "--data-dir", str(self.data_dir), "--output", "json"],
            capture_output=True,
            text=True,
            env=clean_env(),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result: list[dict[str, Any]] = json.loads(done.stdout)
        return result

    def proof_header(self, chain_pem: str, key: Any, method: str, path: str, body: bytes) -> str:
        proof = make_proof(chain_pem, key, "admin", f"{method} {path}\n".encode() + body)
        return base64.b64encode(json.dumps(proof).encode()).decode()


def csr_pem(key: Any) -> str:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def raw_es256(key: Any, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without idmint or SoftHSM settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDMINT_")}
    env.pop("SOFTHSM2_CONF", None)
    return {**env, **extra}


def start_server(
    data: Path,
    base: Path,
    name: str = "server",
    workers: int = 1,
    new_session: bool = False,
    issuers: tuple[TokenIssuer, TokenIssuer] | None = None,
    bootstrap: tuple[Any, x509.Certificate] | None = None,
    rate_limit: str | None = "none",
) -> Server:
    """Start ``idmint server`` on ``data`` on a free port and wait until it is ready.

    ``rate_limit=None`` leaves the rate limits to the data directory's ``[limits]``.
    """
    port = _free_port()
    log_path = base / f"{name}.log"
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                *_idmint(),
                "server",
                "--data-dir",
                str(data),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                *(() if rate_limit is None else ("--rate-limit", rate_limit)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=new_session,
        )
    ci, k8s = issuers or (TokenIssuer("x"), TokenIssuer("y"))
    ca_key, ca_cert = bootstrap or _bootstrap_ca(base)
    server = Server(data, port, process, ci, k8s, ca_key, ca_cert)
    deadline = time.monotonic() + 60
    while True:
        try:
            if server.request("GET", "/readyz")[0] == 200:
                return server
        except (OSError, ssl.SSLError):
            pass  # not listening yet
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("idmint server did not start:\n" + log_path.read_text())
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _idmint() -> list[str]:
    script = Path(sys.executable).parent / "idmint"
    return [str(script)] if script.exists() else [sys.executable, "-m", "idmint.cli.main"]


def init_data_dir(data: Path, trust_domain: str = "example.org", cache_seconds: float = 0) -> Path:
    """``idmint init`` of a fresh data directory (embedded SoftHSM + SQLite).

    ``cache_seconds = 0`` by default: the workers re-read entries and
    authorities on every request, so a test sees an admin change at once
    instead of sleeping past the cache (1 s in production).
    """
    subprocess.run(
        [*_idmint(), "init", "--data-dir", str(data), "--trust-domain", trust_domain],
        check=True,
        capture_output=True,
        env=clean_env(),
    )
    config = data / "idmint.toml"
    text = config.read_text()
    assert "\n[ca]\n" in text, text
    config.write_text(text.replace("\n[ca]\n", f"\n[ca]\ncache_seconds = {cache_seconds}\n", 1))
    return data


def start_attesting_server(
    base: Path, workers: int = 2, extra_config: str = "", name: str = "server"
) -> Server:
    """``idmint server`` on a fresh data directory under ``base`` that trusts a test CI
    OIDC issuer, a test Kubernetes issuer and a bootstrap CA (x509pop).

    ``extra_config`` is appended to idmint.toml (e.g. an ``[anomaly]`` section).
    """
    data = init_data_dir(base / "data")
    ci, k8s = TokenIssuer(OIDC_ISSUER), TokenIssuer(K8S_ISSUER)
    (data / "ci-jwks.json").write_text(json.dumps(ci.jwks()))
    (data / "k8s-jwks.json").write_text(json.dumps(k8s.jwks()))
    bootstrap_key, bootstrap_cert = _bootstrap_ca(data)
    with (data / "idmint.toml").open("a") as config:
        config.write(
            f'\n[attestation.oidc.ci]\nissuer = "{OIDC_ISSUER}"\naudience = "idmint"\n'
            'jwks_file = "ci-jwks.json"\nclaims = ["sub", "repository", "ref"]\n'
            f'\n[attestation.k8s_psat]\nissuer = "{K8S_ISSUER}"\naudience = "idmint"\n'
            'jwks_file = "k8s-jwks.json"\ncluster = "test"\n'
            '\n[attestation.x509pop]\nca_bundle = "bootstrap-ca.pem"\n' + extra_config
        )
    return start_server(
        data,
        base,
        name,
        workers=workers,
        issuers=(ci, k8s),
        bootstrap=(bootstrap_key, bootstrap_cert),
    )


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_attesting_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)
