"""Regenerate the CSR test vectors in this folder: python make_vectors.py

Each ``bad_*`` file must be refused by ``ca.csr.check_csr`` (or, for the
ones asking for extra names, by ``check_requested_names`` for an entry
granting spiffe://example.org/web and web.example.org); each ``good_*`` file
must be accepted. Keys are random; the files were generated once and kept.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

HERE = Path(__file__).parent
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


SHA256 = hashes.SHA256()


def csr(key, *extensions, algorithm=SHA256):
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "workload")])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, algorithm)


def main() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    good = csr(p256)
    (HERE / "good_p256.der").write_bytes(good.public_bytes(DER))
    (HERE / "good_p384.pem").write_bytes(
        csr(ec.generate_private_key(ec.SECP384R1())).public_bytes(PEM)
    )
    (HERE / "good_rsa2048.pem").write_bytes(
        csr(rsa.generate_private_key(65537, 2048)).public_bytes(PEM)
    )
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier("spiffe://example.org/web"),
            x509.DNSName("web.example.org"),
        ]
    )
    (HERE / "good_matching_sans.pem").write_bytes(csr(p256, san).public_bytes(PEM))

    (HERE / "bad_garbage.der").write_bytes(b"\x30\x82\x01\x00this is not a certificate request")
    (HERE / "bad_truncated.der").write_bytes(good.public_bytes(DER)[:-40])
    (HERE / "bad_pem_garbage.pem").write_bytes(
        b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n"
    )
    (HERE / "bad_empty.der").write_bytes(b"")
    tampered = bytearray(good.public_bytes(DER))
    tampered[-5] ^= 0x01  # inside the signature BIT STRING
    (HERE / "bad_signature.der").write_bytes(bytes(tampered))
    (HERE / "bad_dsa2048.pem").write_bytes(csr(dsa.generate_private_key(2048)).public_bytes(PEM))
    (HERE / "bad_rsa1024.pem").write_bytes(
        csr(rsa.generate_private_key(65537, 1024)).public_bytes(PEM)
    )
    (HERE / "bad_p521.pem").write_bytes(
        csr(ec.generate_private_key(ec.SECP521R1())).public_bytes(PEM)
    )
    (HERE / "bad_ed25519.pem").write_bytes(
        csr(ed25519.Ed25519PrivateKey.generate(), algorithm=None).public_bytes(PEM)
    )
    (HERE / "bad_ca_requested.pem").write_bytes(
        csr(p256, x509.BasicConstraints(ca=True, path_length=None)).public_bytes(PEM)
    )
    (HERE / "bad_extra_uri_san.pem").write_bytes(
        csr(
            p256,
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://example.org/admin")]
            ),
        ).public_bytes(PEM)
    )
    (HERE / "bad_extra_dns_san.pem").write_bytes(
        csr(p256, x509.SubjectAlternativeName([x509.DNSName("evil.example.org")])).public_bytes(PEM)
    )


if __name__ == "__main__":
    main()
