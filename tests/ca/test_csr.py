"""ca.csr against the stored corpus in tests/vectors/csr (see tests/vectors/README.md)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idmint.ca.x509.csr import CheckedCSR, InvalidCSR, check_csr, check_requested_names

VECTORS = Path(__file__).parent.parent / "vectors" / "csr"
WEB = "spiffe://example.org/web"
WEB_DNS = ("web.example.org", "www.example.org")

#: Refused by check_csr: file -> a distinctive part of the reason.
REFUSED = {
    "bad_empty.der": "the CSR is empty",
    "bad_garbage.der": "not a PKCS#10 CSR",
    "bad_truncated.der": "not a PKCS#10 CSR",
    "bad_pem_garbage.pem": "not a PKCS#10 CSR",
    "bad_pem_base64.pem": "not a PKCS#10 CSR",
    "bad_signature.der": "CSR signature does not verify",
    "bad_dsa2048.pem": "CSR key is DSA 2048 bits; use EC P-256/P-384 or RSA",
    "bad_rsa1024.pem": "CSR key is RSA 1024 bits; use RSA >= 2048 or EC P-256/P-384",
    "bad_rsa9216.pem": "CSR key is RSA 9216 bits; use RSA <= 8192",
    "bad_p192.pem": r"CSR key is EC P-192 \(secp192r1\); use EC P-256/P-384",
    "bad_p521.pem": r"CSR key is EC P-521 \(secp521r1\); use EC P-256/P-384",
    "bad_ed25519.pem": "CSR key is Ed25519; use EC P-256/P-384",
    "bad_ed448.pem": "CSR key is Ed448; use EC P-256/P-384",
    "bad_ca_requested.pem": "CSR asks to be a CA .*workload certificates are never CAs",
    "bad_duplicate_san.der": "requested extensions are malformed .*Duplicate 2.5.29.17",
}
#: Accepted by check_csr, refused by check_requested_names for the WEB entry.
NAMES_REFUSED = {
    "bad_extra_uri_san.pem": "SAN URI:spiffe://example.org/admin that the registration entry",
    "bad_extra_dns_san.pem": "SAN DNS:evil.example.org that the registration entry",
    "bad_ip_san.pem": "SAN IP:10.0.0.1 that the registration entry",
    "bad_email_san.pem": "SAN email:root@example.org that the registration entry",
}
#: Accepted: file -> (key type, key size, requested URIs, requested DNS names).
ACCEPTED: dict[str, tuple[type, int, tuple[str, ...], tuple[str, ...]]] = {
    "good_p256.der": (ec.EllipticCurvePublicKey, 256, (), ()),
    "good_p256.pem": (ec.EllipticCurvePublicKey, 256, (), ()),
    "good_p384.der": (ec.EllipticCurvePublicKey, 384, (), ()),
    "good_p384.pem": (ec.EllipticCurvePublicKey, 384, (), ()),
    "good_rsa2048.der": (rsa.RSAPublicKey, 2048, (), ()),
    "good_rsa2048.pem": (rsa.RSAPublicKey, 2048, (), ()),
    "good_matching_sans.pem": (ec.EllipticCurvePublicKey, 256, (WEB,), ("web.example.org",)),
    "good_ca_false.pem": (ec.EllipticCurvePublicKey, 256, (), ()),
}


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def test_every_vector_on_disk_is_in_a_table() -> None:
    on_disk = {path.name for path in VECTORS.iterdir() if path.suffix in (".der", ".pem")}
    assert on_disk == set(REFUSED) | set(NAMES_REFUSED) | set(ACCEPTED)


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSED.items()))
def test_malformed_or_unfit_csr_is_refused(name: str, reason: str) -> None:
    with pytest.raises(InvalidCSR, match=reason) as caught:
        check_csr(vector(name))
    assert caught.value.code == "invalid-csr"


@pytest.mark.parametrize(("name", "reason"), sorted(NAMES_REFUSED.items()))
def test_san_the_entry_does_not_grant_is_refused(name: str, reason: str) -> None:
    checked = check_csr(vector(name))  # well-formed: only the names are wrong
    with pytest.raises(InvalidCSR, match=re.escape(reason)) as caught:
        check_requested_names(checked, WEB, WEB_DNS)
    assert "the CA sets names from the entry" in str(caught.value)


@pytest.mark.parametrize(("name", "expected"), sorted(ACCEPTED.items()))
def test_good_csr_is_accepted(
    name: str, expected: tuple[type, int, tuple[str, ...], tuple[str, ...]]
) -> None:
    key_type, size, uris, dns_names = expected
    checked = check_csr(vector(name))
    assert isinstance(checked.public_key, key_type)
    assert checked.public_key.key_size == size
    assert (checked.uris, checked.dns_names, checked.other_names) == (uris, dns_names, ())
    assert checked.is_ca_requested is False
    check_requested_names(checked, WEB, WEB_DNS)


@pytest.mark.parametrize("stem", ["good_p256", "good_p384", "good_rsa2048"])
def test_pem_and_der_of_one_request_give_the_same_key(stem: str) -> None:
    from_der = check_csr(vector(f"{stem}.der"))
    from_pem = check_csr(vector(f"{stem}.pem"))
    assert from_der.public_key == from_pem.public_key


def test_pem_with_leading_whitespace_is_pem() -> None:
    checked = check_csr(b"\n  " + vector("good_p256.pem"))
    assert checked.public_key == check_csr(vector("good_p256.der")).public_key


def test_whitespace_only_is_empty() -> None:
    with pytest.raises(InvalidCSR, match="the CSR is empty"):
        check_csr(b" \r\n\t")


def test_tampered_vector_differs_from_a_valid_csr_only_in_its_signature() -> None:
    # Guards the corpus itself: the refusal must come from the signature check.
    tampered = x509.load_der_x509_csr(vector("bad_signature.der"))
    assert not tampered.is_signature_valid
    assert isinstance(tampered.public_key(), ec.EllipticCurvePublicKey)
    fixed = bytearray(vector("bad_signature.der"))
    start = bytes(fixed).rindex(tampered.signature)
    fixed[start + len(tampered.signature) // 4] ^= 0x01
    assert x509.load_der_x509_csr(bytes(fixed)).is_signature_valid


def test_extra_uri_vector_also_asks_for_the_granted_id() -> None:
    # The refusal names the offending URI, not the first one requested.
    checked = check_csr(vector("bad_extra_uri_san.pem"))
    assert checked.uris == (WEB, "spiffe://example.org/admin")


def test_no_sans_is_accepted_for_any_entry() -> None:
    checked = check_csr(vector("good_p256.der"))
    check_requested_names(checked, "spiffe://example.org/api", [])


def test_names_are_checked_against_the_given_entry() -> None:
    checked = check_csr(vector("good_matching_sans.pem"))
    with pytest.raises(InvalidCSR, match=re.escape("SAN URI:spiffe://example.org/web that")):
        check_requested_names(checked, "spiffe://example.org/api", WEB_DNS)
    with pytest.raises(InvalidCSR, match=r"SAN DNS:web\.example\.org that"):
        check_requested_names(checked, WEB, ["www.example.org"])
    check_requested_names(checked, WEB, ["web.example.org"])


def test_dns_names_compare_case_insensitively_uris_exactly() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    asked = _csr_asking_for(key, [x509.DNSName("WEB.Example.org")])
    check_requested_names(check_csr(asked), WEB, WEB_DNS)
    upper = _csr_asking_for(key, [x509.UniformResourceIdentifier("spiffe://example.org/WEB")])
    with pytest.raises(InvalidCSR, match=re.escape("SAN URI:spiffe://example.org/WEB")):
        check_requested_names(check_csr(upper), WEB, WEB_DNS)


def test_hand_made_value_asking_to_be_a_ca_is_refused() -> None:
    checked = replace(check_csr(vector("good_p256.der")), is_ca_requested=True)
    assert isinstance(checked, CheckedCSR)
    with pytest.raises(InvalidCSR, match="asks to be a CA"):
        check_requested_names(checked, WEB, WEB_DNS)


def test_unprintable_san_is_escaped_in_the_message() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    checked = check_csr(_csr_asking_for(key, [x509.DNSName("evil\nexample.org")]))
    with pytest.raises(InvalidCSR) as caught:
        check_requested_names(checked, WEB, WEB_DNS)
    assert "\n" not in str(caught.value)
    assert r"DNS:evil\nexample.org" in str(caught.value)


def _csr_asking_for(key: ec.EllipticCurvePrivateKey, names: list[x509.GeneralName]) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
