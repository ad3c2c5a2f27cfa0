"""Make the CSR test vectors in this folder: ``.venv/bin/python tests/vectors/csr/make_vectors.py``.

The vectors were made once with this script and are stored; the tests read
the files and never run it. Keys are random, so running it again rewrites
every file with different bytes but the same meaning (see ../README.md).

Entry used by the tests: spiffe://example.org/web with DNS names
web.example.org and www.example.org.

- ``good_*``: accepted by ``ca.csr.check_csr`` and by ``check_requested_names``.
- ``bad_*`` listed in ``NAMES_REFUSED``: accepted by ``check_csr``, refused by
  ``check_requested_names`` for that entry.
- every other ``bad_*``: refused by ``check_csr``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

HERE = Path(__file__).parent
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
WEB = "spiffe://example.org/web"


def make_csr(
    key: CertificateIssuerPrivateKeyTypes,
    extensions: Iterable[x509.ExtensionType] = (),
) -> x509.CertificateSigningRequest:
    """A CSR with subject CN=workload, signed by ``key`` (SHA-256 unless EdDSA)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    eddsa = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return builder.sign(key, None if eddsa else hashes.SHA256())


def der_length(length: int) -> bytes:
    """A DER length octet string (X.690 8.1.3)."""
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def resigned(
    csr: x509.CertificateSigningRequest, key: ec.EllipticCurvePrivateKey, tbs: bytes
) -> bytes:
    """``csr`` with its CertificationRequestInfo replaced by ``tbs`` and signed again."""
    der = csr.public_bytes(DER)
    original_tbs = csr.tbs_certrequest_bytes
    start = der.index(original_tbs) + len(original_tbs)
    algorithm_id = der[start : len(der) - len(der_tlv(0x03, b"\x00" + csr.signature))]
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return der_tlv(0x30, tbs + algorithm_id + der_tlv(0x03, b"\x00" + signature))


def duplicate_san(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A validly signed CSR whose extension request holds two SAN extensions.

    cryptography's builder refuses duplicates, so an issuerAltName extension
    with the same content is renamed to subjectAltName in the DER (both OIDs
    are 3 bytes long, so no length changes) and the request is signed again.
    """
    names = [x509.DNSName("web.example.org")]
    csr = make_csr(key, [x509.SubjectAlternativeName(names), x509.IssuerAlternativeName(names)])
    ian = b"\x06\x03\x55\x1d\x12"  # OID 2.5.29.18, issuerAltName
    san = b"\x06\x03\x55\x1d\x11"  # OID 2.5.29.17, subjectAltName
    tbs = csr.tbs_certrequest_bytes
    assert tbs.count(ian) == 1
    der = resigned(csr, key, tbs.replace(ian, san))
    reloaded = x509.load_der_x509_csr(der)
    assert reloaded.is_signature_valid
    return der


def flip_signature_byte(csr: x509.CertificateSigningRequest) -> bytes:
    """``csr`` in DER with one bit flipped in the middle of its signature value."""
    der = bytearray(csr.public_bytes(DER))
    start = bytes(der).rindex(csr.signature)
    # Inside the ECDSA r INTEGER's value, past its tag and length: still DER.
    der[start + len(csr.signature) // 4] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der))
    assert not tampered.is_signature_valid
    return bytes(der)


def write(name: str, data: bytes) -> None:
    (HERE / name).write_bytes(data)


def main() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa2048 = rsa.generate_private_key(65537, 2048)

    for name, key in (("p256", p256), ("p384", p384), ("rsa2048", rsa2048)):
        good = make_csr(key)
        write(f"good_{name}.der", good.public_bytes(DER))
        write(f"good_{name}.pem", good.public_bytes(PEM))
    matching = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(WEB), x509.DNSName("web.example.org")]
    )
    write("good_matching_sans.pem", make_csr(p256, [matching]).public_bytes(PEM))
    ca_false = x509.BasicConstraints(ca=False, path_length=None)
    write("good_ca_false.pem", make_csr(p256, [ca_false]).public_bytes(PEM))

    p256_csr = make_csr(p256)
    write("bad_empty.der", b"")
    write("bad_garbage.der", b"\x30\x82\x01\x00this is not a certificate request")
    write("bad_truncated.der", p256_csr.public_bytes(DER)[:-40])
    write(
        "bad_pem_garbage.pem",
        b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3NyIGF0IGFsbA==\n"
        b"-----END CERTIFICATE REQUEST-----\n",
    )
    write(
        "bad_pem_base64.pem",
        b"-----BEGIN CERTIFICATE REQUEST-----\n!!not base64!!\n-----END CERTIFICATE REQUEST-----\n",
    )
    write("bad_signature.der", flip_signature_byte(p256_csr))
    write("bad_dsa2048.pem", make_csr(dsa.generate_private_key(2048)).public_bytes(PEM))
    write("bad_rsa1024.pem", make_csr(rsa.generate_private_key(65537, 1024)).public_bytes(PEM))
    write("bad_rsa9216.pem", make_csr(rsa.generate_private_key(65537, 9216)).public_bytes(PEM))
    write("bad_p192.pem", make_csr(ec.generate_private_key(ec.SECP192R1())).public_bytes(PEM))
    write("bad_p521.pem", make_csr(ec.generate_private_key(ec.SECP521R1())).public_bytes(PEM))
    write("bad_ed25519.pem", make_csr(ed25519.Ed25519PrivateKey.generate()).public_bytes(PEM))
    write("bad_ed448.pem", make_csr(ed448.Ed448PrivateKey.generate()).public_bytes(PEM))
    ca_true = x509.BasicConstraints(ca=True, path_length=None)
    write("bad_ca_requested.pem", make_csr(p256, [ca_true]).public_bytes(PEM))
    write("bad_duplicate_san.der", duplicate_san(p256))

    def asking_for(*names: x509.GeneralName) -> bytes:
        return make_csr(p256, [x509.SubjectAlternativeName(list(names))]).public_bytes(PEM)

    write(
        "bad_extra_uri_san.pem",
        asking_for(
            x509.UniformResourceIdentifier(WEB),
            x509.UniformResourceIdentifier("spiffe://example.org/admin"),
        ),
    )
    write(
        "bad_extra_dns_san.pem",
        asking_for(x509.DNSName("web.example.org"), x509.DNSName("evil.example.org")),
    )
    write("bad_ip_san.pem", asking_for(x509.IPAddress(ipaddress.ip_address("10.0.0.1"))))
    write("bad_email_san.pem", asking_for(x509.RFC822Name("root@example.org")))


if __name__ == "__main__":
    main()
