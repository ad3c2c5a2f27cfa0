"""The light client (``pip install idmint``) works without the server's modules.

A fresh Python with an import hook that refuses every server-side module
(what ``idmint[server]`` brings, and idmint's own server packages) must
still import ``idmint.workload``, make a key and CSR and sign a proof that
the server's check accepts. scripts/wheel_check.sh does the same from a
real wheel in a venv holding only cryptography.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from idmint.cli.main import EXTRA_MODULES
from idmint.client import WorkloadError
from idmint.pop import jwt_payload, make_proof, statement

REFUSED = (*EXTRA_MODULES["server"], "idmint.ca", "idmint.hsm", "idmint.attestation")

PROBE = f"""
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith({REFUSED!r}):
            raise ModuleNotFoundError(f"refused: {{name}}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
import idmint.workload
from idmint.client import new_key_and_csr, x509_request
from idmint.pop import make_proof

key, csr = new_key_and_csr()
assert x509_request({{"type": "join_token", "token": "t"}}, csr)["csr"] == csr
proof = make_proof("chain", key, "x509-renew", csr.encode())
assert set(proof) == {{"chain", "timestamp", "signature"}}
print("ok")
"""


def _certificate(key: ec.EllipticCurvePrivateKey, now: datetime, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ca" if ca else "w")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://t.test/w")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_the_light_client_needs_nothing_of_the_server() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_proof_made_by_the_client_is_accepted_by_the_server_check() -> None:
    from idmint.ca.issuance.pop import verify_proof
    from idmint.client import new_key_and_csr

    key, _csr = new_key_and_csr()
    # A self-signed SVID-shaped certificate stands for the CA's chain here.
    now = datetime.now(UTC)
    chain = _certificate(key, now, ca=False).public_bytes(Encoding.PEM).decode()
    proof = make_proof(chain, key, "jwt-svid", jwt_payload(["a"]), now)
    # The server's check reaches the chain verification: the signature over
    # the shared statement format was accepted first.
    from idmint.attestation.base import AttestationFailed

    roots = [_certificate(ec.generate_private_key(ec.SECP256R1()), now, ca=True)]
    with pytest.raises(AttestationFailed, match="does not chain"):
        verify_proof(proof, "jwt-svid", jwt_payload(["a"]), roots, now, lambda serial: False)
    with pytest.raises(AttestationFailed, match="signature"):
        verify_proof(proof, "jwt-svid", jwt_payload(["b"]), roots, now, lambda serial: False)


def test_the_statement_format_is_fixed() -> None:
    # Clients and servers of different versions must agree on these bytes.
    digest = hashlib.sha256(b"csr").hexdigest().encode()
    expected = b"idmint-pop-v1\x00x509-renew\x001700000000\x00" + digest
    assert statement("x509-renew", 1700000000, b"csr") == expected


def test_a_key_that_cannot_sign_a_proof_is_a_clear_error() -> None:
    with pytest.raises(WorkloadError, match="SVID keys are EC or RSA, not"):
        make_proof("chain", ed25519.Ed25519PrivateKey.generate(), "jwt-svid", b"")
