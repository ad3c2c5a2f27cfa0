"""Revocation through the real server, checked with OpenSSL: CRL, OCSP, JWT denylist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.server.conftest import Server


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def _split_chain(tmp_path: Path, name: str, chain_pem: str) -> tuple[str, str]:
    leaf, intermediate = x509.load_pem_x509_certificates(chain_pem.encode())
    leaf_path, int_path = tmp_path / f"{name}.pem", tmp_path / "intermediate.pem"
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    int_path.write_bytes(intermediate.public_bytes(serialization.Encoding.PEM))
    return str(leaf_path), str(int_path)


def _fetch_crl(server: Server, tmp_path: Path) -> str:
    status, headers, der = server.request("GET", "/v1/crl")
    assert status == 200 and headers["content-type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(der)
    path = tmp_path / "crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _ocsp_status(server: Server, tmp_path: Path, leaf: str, issuer: str, root: str) -> str:
    request = tmp_path / "req.der"
    made = _openssl("ocsp", "-issuer", issuer, "-cert", leaf, "-reqout", str(request), "-no_nonce")
    assert made.returncode == 0, made.stderr
    status, headers, der = server.request(
        "POST",
        "/v1/ocsp",
        raw=request.read_bytes(),
        headers={"Content-Type": "application/ocsp-request"},
    )
    assert status == 200 and headers["content-type"] == "application/ocsp-response"
    response = tmp_path / "resp.der"
    response.write_bytes(der)
    checked = _openssl(
        "ocsp",
        "-respin",
        str(response),
        "-issuer",
        issuer,
        "-cert",
        leaf,
        "-CAfile",
        root,
        "-verify_other",
        issuer,
        "-no_nonce",
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Response verify OK" in checked.stderr, checked.stderr
    line = next(x for x in checked.stdout.splitlines() if x.startswith(leaf))
    return line.split(":", 1)[1].strip()


def test_crl_and_ocsp_in_openssl(server: Server, tmp_path: Path) -> None:
    _, good = server.x509_by_token("spiffe://example.org/rev/good")
    _, bad = server.x509_by_token("spiffe://example.org/rev/bad")
    root = tmp_path / "root.pem"
    root.write_text(good["bundle_pem"])
    good_leaf, intermediate = _split_chain(tmp_path, "good", good["chain_pem"])
    bad_leaf, _ = _split_chain(tmp_path, "bad", bad["chain_pem"])
    server.admin(
        "POST",
        "/v1/revocations",
        {"kind": "x509", "serial": bad["serial"], "reason": "keyCompromise"},
    )

    crl = _fetch_crl(server, tmp_path)
    common = [
        "verify",
        "-crl_check",
        "-CAfile",
        str(root),
        "-untrusted",
        intermediate,
        "-CRLfile",
        crl,
    ]
    accepted = _openssl(*common, good_leaf)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    refused = _openssl(*common, bad_leaf)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    text = _openssl("crl", "-in", crl, "-noout", "-text").stdout
    assert "CRL Number" in text and "Key Compromise" in text

    assert _ocsp_status(server, tmp_path, good_leaf, intermediate, str(root)) == "good"
    assert _ocsp_status(server, tmp_path, bad_leaf, intermediate, str(root)) == "revoked"


def test_revoking_twice_and_unknown_serials_are_clear_errors(server: Server) -> None:
    _, svid = server.x509_by_token("spiffe://example.org/rev/twice")
    body = {"kind": "x509", "serial": svid["serial"]}
    server.admin("POST", "/v1/revocations", body)
    try:
        server.admin("POST", "/v1/revocations", body)
        raise AssertionError("second revocation accepted")
    except Exception as exc:  # AdminAPIError
        assert "already revoked" in str(exc) and "409" in str(exc)
    try:
        server.admin("POST", "/v1/revocations", {"kind": "x509", "serial": "abcdef"})
        raise AssertionError("unknown serial accepted")
    except Exception as exc:
        assert "no X509-SVID with serial abcdef was issued" in str(exc)


def test_jwt_denylist(server: Server) -> None:
    spiffe_id = "spiffe://example.org/rev/jwt"
    server.entry(spiffe_id, ["join_token:any:true"])
    status, _, issued = server.request(
        "POST",
        "/v1/svid/jwt",
        {
            "attestation": {"type": "join_token", "token": server.join_token(spiffe_id)},
            "audience": "db",
        },
    )
    assert status == 201
    check = {"token": issued["token"], "audience": "db"}
    status, _, valid = server.request("POST", "/v1/svid/jwt/validate", check)
    assert status == 200 and valid["spiffe_id"] == spiffe_id
    jti = valid["claims"]["jti"]
    status, _, wrong = server.request("POST", "/v1/svid/jwt/validate", {**check, "audience": "x"})
    assert status == 401 and "does not include 'x'" in wrong["detail"]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "idmint"),
            "revoke",
            "jwt",
            "--data-dir",
            str(server.data_dir),
            "--jti",
            jti,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status, _, denied = server.request("POST", "/v1/svid/jwt/validate", check)
    assert status == 401 and "was revoked" in denied["detail"]


def test_revoking_an_entry_revokes_its_credentials_and_stops_issuance(
    server: Server, tmp_path: Path
) -> None:
    spiffe_id = "spiffe://example.org/rev/entry"
    _, svid = server.x509_by_token(spiffe_id)
    (entry,) = [
        e for e in server.admin("GET", "/v1/entries")["entries"] if e["spiffe_id"] == spiffe_id
    ]
    result = server.admin("POST", "/v1/revocations", {"kind": "entry", "entry_id": entry["id"]})
    assert svid["serial"] in result["revoked"]
    root = tmp_path / "root.pem"
    root.write_text(svid["bundle_pem"])
    leaf, intermediate = _split_chain(tmp_path, "leaf", svid["chain_pem"])
    assert _ocsp_status(server, tmp_path, leaf, intermediate, str(root)) == "revoked"
    token = server.join_token(spiffe_id)
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.server.conftest import csr_pem

    status, _, problem = server.request(
        "POST",
        "/v1/svid/x509",
        {
            "attestation": {"type": "join_token", "token": token},
            "csr": csr_pem(ec.generate_private_key(ec.SECP256R1())),
        },
    )
    assert status == 403 and "no enabled, unexpired registration entry" in problem["detail"]


def test_ocsp_unknown_for_a_serial_never_issued(server: Server, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    _, svid = server.x509_by_token("spiffe://example.org/rev/unknown")
    root = tmp_path / "root.pem"
    root.write_text(svid["bundle_pem"])
    _, intermediate = _split_chain(tmp_path, "real", svid["chain_pem"])
    issuer = x509.load_pem_x509_certificate(Path(intermediate).read_bytes())
    forger = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    stranger = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(forger.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(minutes=5))
        .sign(forger, hashes.SHA256())
    )
    path = tmp_path / "stranger.pem"
    path.write_bytes(stranger.public_bytes(serialization.Encoding.PEM))
    assert _ocsp_status(server, tmp_path, str(path), intermediate, str(root)) == "unknown"


@pytest.mark.slow  # prepares a JWT authority in the HSM through the CLI (~10 s here)
def test_revoke_an_authority_through_the_api(server: Server) -> None:
    (row,) = server.authority("prepare", "jwt")
    result = server.admin("POST", "/v1/revocations", {"kind": "authority", "id": row["id"]})
    assert result == {"revoked": [str(row["id"])], "kind": "authority"}
    _, _, jwks = server.request("GET", "/v1/jwks")
    assert row["kid"] not in {k["kid"] for k in jwks["keys"]}
