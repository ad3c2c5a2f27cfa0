"""The light client of an idmint server's HTTPS API: make a key and CSR, POST it.

Used by ``idmint.workload``, the ``idmint svid`` commands and the HTTP
benchmark, so a request is built and an answer judged in one place. It
needs cryptography alone (imported when a key is made: start-up time is
what a service pays on every launch) and never imports the server's code.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from idmint.errors import ClientError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec


class WorkloadError(ClientError):
    """The server refused or could not be reached, or the SVID files are unusable."""

    code = "workload-error"


class Issued(NamedTuple):
    """A new X509-SVID: the key made here (never sent) and the server's answer."""

    key: ec.EllipticCurvePrivateKey
    #: ``spiffe_id``, ``chain_pem``, ``bundle_pem``, ``expires_at``, ``serial``.
    response: dict[str, Any]


def new_key_and_csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh P-256 key and its CSR (PEM, empty subject: the server sets the SAN)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    return key, csr


def x509_request(
    evidence: dict[str, Any], csr: str, spiffe_id: str | None = None
) -> dict[str, Any]:
    """The body of ``POST /v1/svid/x509``: attestation evidence and a CSR."""
    body: dict[str, Any] = {"attestation": evidence, "csr": csr}
    if spiffe_id:
        body["spiffe_id"] = spiffe_id
    return body


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM, for a file of mode 0600."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Server:
    """An idmint server's API at an ``https://`` URL, trusted through a PEM bundle."""

    def __init__(self, url: str, bundle: str, timeout: float = 30) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise WorkloadError(f"server {url!r} is not an https:// URL")
        self.url = url
        self._host, self._port = parts.hostname, parts.port or 443
        self._timeout = timeout
        try:
            self._trust = ssl.create_default_context(cafile=bundle)
        except (OSError, ssl.SSLError) as exc:
            raise WorkloadError(f"cannot read the bundle {bundle}: {exc}") from None

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON; the decoded answer, or :class:`WorkloadError` naming why not."""
        import http.client
        import json

        connection = http.client.HTTPSConnection(
            self._host, self._port, context=self._trust, timeout=self._timeout
        )
        try:
            connection.request(
                "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise WorkloadError(f"cannot reach {self.url}: {exc}") from None
        finally:
            connection.close()
        try:
            decoded = json.loads(data)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            raise WorkloadError(f"{self.url} answered HTTP {response.status} without a JSON object")
        if response.status >= 400:
            raise WorkloadError(f"{decoded.get('detail', decoded)} (HTTP {response.status})")
        return decoded

    def fetch_x509(self, evidence: dict[str, Any], spiffe_id: str | None = None) -> Issued:
        """Attest with ``evidence`` and get an X509-SVID for a key made here."""
        key, csr = new_key_and_csr()
        return Issued(key, self.post("/v1/svid/x509", x509_request(evidence, csr, spiffe_id)))

    def renew_x509(self, chain_pem: str, key: ec.EllipticCurvePrivateKey) -> Issued:
        """A new X509-SVID (new key) by proof of possession of the current one."""
        from idmint.pop import make_proof

        new_key, csr = new_key_and_csr()
        proof = make_proof(chain_pem, key, "x509-renew", csr.encode())
        return Issued(new_key, self.post("/v1/svid/x509/renew", {"csr": csr, "proof": proof}))


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers never see a partial file."""
    import os
    import tempfile

    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_svid_files(directory: Path, issued: Issued) -> None:
    """``svid.key`` (0600), ``svid.pem`` and ``bundle.pem`` in ``directory``, each atomically.

    The layout ``idmint.workload.from_directory()`` and servers such as nginx read.
    """
    directory.mkdir(parents=True, exist_ok=True)
    # Key first: a reader that sees the new certificate finds its key already there.
    write_atomic(directory / "svid.key", key_pem(issued.key), 0o600)
    write_atomic(directory / "svid.pem", issued.response["chain_pem"].encode())
    write_atomic(directory / "bundle.pem", issued.response["bundle_pem"].encode())
