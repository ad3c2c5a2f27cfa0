"""Taint: the issuing authority stops at once, holders are told to renew, renewal refuses."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.pop import make_proof
from tests.server.conftest import Server, csr_pem


def test_taint_of_the_intermediate(server: Server) -> None:
    key, before = server.x509_by_token("spiffe://example.org/taint/web")
    admin_id = "spiffe://example.org/taint/admin"
    admin_key, admin_svid = server.x509_by_token(admin_id, admin=True)
    status, _, fresh = server.request(
        "POST", "/v1/svid/x509/status", {"chain": before["chain_pem"]}
    )
    assert status == 200 and fresh["renew_now"] is False and fresh["reasons"] == []

    server.authority("taint", "intermediate")

    status, _, told = server.request("POST", "/v1/svid/x509/status", {"chain": before["chain_pem"]})
    assert status == 200 and told["renew_now"] is True and told["reasons"] == ["issuer tainted"]
    csr = csr_pem(ec.generate_private_key(ec.SECP256R1()))
    proof = make_proof(before["chain_pem"], key, "x509-renew", csr.encode())
    status, _, refused = server.request("POST", "/v1/svid/x509/renew", {"csr": csr, "proof": proof})
    assert status == 401 and "tainted intermediate authority" in refused["detail"]

    # An admin SVID from the tainted intermediate no longer authenticates.
    header = server.proof_header(admin_svid["chain_pem"], admin_key, "GET", "/v1/entries", b"")
    status, _, problem = server.request("GET", "/v1/entries", headers={"X-Idmint-Proof": header})
    assert status == 401 and "tainted intermediate authority" in problem["detail"]

    # Attesting again works, under the successor.
    _, after = server.x509_by_token("spiffe://example.org/taint/web2")
    old_issuer = x509.load_pem_x509_certificates(before["chain_pem"].encode())[1]
    new_issuer = x509.load_pem_x509_certificates(after["chain_pem"].encode())[1]
    assert new_issuer.serial_number != old_issuer.serial_number
