"""The agent's side of ``/v1/agent`` (see ``idmint.ca.api.agent``).

HTTPS to the server, trusting ``--bundle``; once attested, every call carries
a proof of possession of the agent SVID (``X-Idmint-Agent-Proof``) over its
method, path and body. The agent key lives in memory only.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.agent.errors import AgentError, ServerRefused, ServerUnreachable
from idmint.client import new_key_and_csr
from idmint.pop import make_proof

PROOF_HEADER = "X-Idmint-Agent-Proof"
TIMEOUT = 10.0


@dataclass(frozen=True)
class AgentSVID:
    """The agent's own SVID."""

    spiffe_id: str
    chain_pem: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


class ServerClient:
    """Calls to the idmint server's agent API."""

    def __init__(self, server: str, bundle_file: str) -> None:
        parts = urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise AgentError(f"server {server!r} is not an https:// URL")
        self.host, self.port = parts.hostname, parts.port or 443
        try:
            self.context = ssl.create_default_context(cafile=bundle_file)
        except (OSError, ssl.SSLError) as exc:
            raise AgentError(f"cannot read the server bundle {bundle_file}: {exc}") from None
        self._lock = threading.Lock()
        self._local = threading.local()
        self.svid: AgentSVID | None = None

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        prove: bool = True,
    ) -> tuple[int, dict[str, str], Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if body is not None else {}
        if prove:
            svid = self.svid
            if svid is None:
                raise AgentError("the agent has not attested yet")
            proof = make_proof(
                svid.chain_pem, svid.key, "agent", f"{method} {path}\n".encode() + payload
            )
            sent[PROOF_HEADER] = base64.b64encode(json.dumps(proof).encode()).decode("ascii")
        # The sync (a GET, every second or so) keeps its connection: a TLS
        # handshake cost the server more CPU than the rest of the sync. Other
        # calls spend single-use proofs, so they never go out on a connection
        # the server may have closed meanwhile (a retry could not tell whether
        # the first try arrived).
        keep = method == "GET"
        for attempt in (1, 2):
            connection = self._kept() if keep else self._new_connection()
            try:
                connection.request(
                    method, path, body=payload or None, headers={**sent, **(headers or {})}
                )
                response = connection.getresponse()
                data = response.read()
                response_headers = {k.lower(): v for k, v in response.getheaders()}
                break
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                connection.close()
                if keep:
                    self._local.connection = None
                if keep and attempt == 1:
                    continue  # a kept connection the server closed while idle: once more
                raise ServerUnreachable(f"cannot reach the idmint server: {exc}") from None
            finally:
                if not keep:
                    connection.close()
        parsed: Any = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                raise ServerUnreachable(
                    f"the server answered HTTP {response.status} with a body that is not JSON"
                ) from None
        if response.status >= 400:
            detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
            kind = str(parsed.get("type", "")) if isinstance(parsed, dict) else ""
            raise ServerRefused(
                f"{detail} (HTTP {response.status})", response.status, kind.rsplit("/", 1)[-1]
            )
        return response.status, response_headers, parsed

    def _new_connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=TIMEOUT
        )

    def _kept(self) -> http.client.HTTPSConnection:
        """This thread's kept-alive connection (one per thread: http.client is not shared)."""
        found: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if found is None:
            found = self._local.connection = self._new_connection()
        return found

    def _install(self, issued: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> AgentSVID:
        chain = str(issued["chain_pem"])
        certificate = x509.load_pem_x509_certificate(chain.encode("ascii"))
        svid = AgentSVID(str(issued["spiffe_id"]), chain, key, certificate)
        self.svid = svid
        return svid

    def nonce(self) -> str:
        """A single-use nonce from the server, for x509pop evidence."""
        _, _, answer = self._call("GET", "/v1/nonce", prove=False)
        if not isinstance(answer, dict) or not isinstance(answer.get("nonce"), str):
            raise AgentError("the server's /v1/nonce answer has no nonce")
        return str(answer["nonce"])

    def attest(self, evidence: dict[str, Any]) -> AgentSVID:
        """Node evidence -> the agent SVID."""
        key, csr = new_key_and_csr()
        _, _, issued = self._call(
            "POST", "/v1/agent/attest", {"attestation": evidence, "csr": csr}, prove=False
        )
        return self._install(issued, key)

    def renew(self) -> AgentSVID:
        """A new agent SVID by proof of the current one."""
        key, csr = new_key_and_csr()
        _, _, issued = self._call("POST", "/v1/agent/renew", {"csr": csr})
        return self._install(issued, key)

    def sync(self, revision: str | None) -> dict[str, Any] | None:
        """The sync document, or None when it is still ``revision``."""
        headers = {"If-None-Match": f'"{revision}"'} if revision else {}
        status, _, document = self._call("GET", "/v1/agent/entries", headers=headers)
        if status == 304:
            return None
        result: dict[str, Any] = document
        return result

    def sign_x509(self, requests: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """One X509-SVID per (entry id, CSR PEM), in one request."""
        _, _, issued = self._call(
            "POST",
            "/v1/agent/x509",
            {"requests": [{"entry_id": e, "csr": c} for e, c in requests]},
        )
        svids: list[dict[str, Any]] = issued["svids"]
        return svids

    def jwt(self, entry_id: str, audiences: list[str]) -> dict[str, Any]:
        _, _, issued = self._call(
            "POST", "/v1/agent/jwt", {"entry_id": entry_id, "audience": audiences}
        )
        result: dict[str, Any] = issued
        return result
