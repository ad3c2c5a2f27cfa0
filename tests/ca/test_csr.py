"""CSR checks against the stored corpus in tests/vectors/csr."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.csr import InvalidCSR, check_csr, check_requested_names

VECTORS = Path(__file__).parent.parent / "vectors" / "csr"
WEB, WEB_DNS = "spiffe://example.org/web", ["web.example.org"]

REFUSED = {
    "bad_garbage.der": "not a PKCS#10 CSR",
    "bad_truncated.der": "not a PKCS#10 CSR",
    "bad_pem_garbage.pem": "not a PKCS#10 CSR",
    "bad_empty.der": "the CSR is empty",
    "bad_signature.der": "signature does not verify",
    "bad_dsa2048.pem": "DSAPublicKey is not accepted",
    "bad_rsa1024.pem": "RSA 1024 bits; use RSA >= 2048",
    "bad_p521.pem": "EC secp521r1; use EC P-256 or P-384",
    "bad_ed25519.pem": "Ed25519PublicKey is not accepted",
    "bad_ca_requested.pem": "asks to be a CA",
}
NAMES_REFUSED = {
    "bad_extra_uri_san.pem": "SAN URI:spiffe://example.org/admin that the registration entry",
    "bad_extra_dns_san.pem": "SAN DNS:evil.example.org that the registration entry",
}


def test_every_bad_vector_is_listed() -> None:
    on_disk = {p.name for p in VECTORS.glob("bad_*")}
    assert on_disk == set(REFUSED) | set(NAMES_REFUSED)


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSED.items()))
def test_refused(name: str, reason: str) -> None:
    with pytest.raises(InvalidCSR, match=reason):
        check_csr((VECTORS / name).read_bytes())


@pytest.mark.parametrize(("name", "reason"), sorted(NAMES_REFUSED.items()))
def test_names_the_entry_does_not_grant_are_refused(name: str, reason: str) -> None:
    checked = check_csr((VECTORS / name).read_bytes())
    with pytest.raises(InvalidCSR, match=reason):
        check_requested_names(checked, WEB, WEB_DNS)


@pytest.mark.parametrize(
    ("name", "key_type", "size"),
    [
        ("good_p256.der", ec.EllipticCurvePublicKey, 256),
        ("good_p384.pem", ec.EllipticCurvePublicKey, 384),
        ("good_rsa2048.pem", rsa.RSAPublicKey, 2048),
        ("good_matching_sans.pem", ec.EllipticCurvePublicKey, 256),
    ],
)
def test_accepted(name: str, key_type: type, size: int) -> None:
    checked = check_csr((VECTORS / name).read_bytes())
    assert isinstance(checked.public_key, key_type)
    assert checked.public_key.key_size == size
    check_requested_names(checked, WEB, WEB_DNS)


def test_matching_sans_are_recorded() -> None:
    checked = check_csr((VECTORS / "good_matching_sans.pem").read_bytes())
    assert checked.uris == (WEB,) and checked.dns_names == ("web.example.org",)
    with pytest.raises(InvalidCSR, match=r"DNS:web\.example\.org"):
        check_requested_names(checked, WEB, [])
