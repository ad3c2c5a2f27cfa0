"""Every key type: generated in the token, signing through cryptography's ABCs."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from idmint.hsm import (
    HSMEd25519PrivateKey,
    HSMEllipticCurvePrivateKey,
    HSMRSAPrivateKey,
    KeyStore,
    KeyType,
    UnsupportedMechanism,
)

# RSA-3072 and RSA-4096 key generation takes SoftHSM seconds each: slow subset.
ALL_TYPES = [
    pytest.param(k, marks=pytest.mark.slow, id=k.value)
    if k in (KeyType.RSA_3072, KeyType.RSA_4096)
    else pytest.param(k, id=k.value)
    for k in KeyType
]


def _hash_for(key_type: KeyType) -> hashes.SHA256 | hashes.SHA384 | None:
    if key_type is KeyType.ED25519:
        return None
    return hashes.SHA384() if key_type is KeyType.EC_P384 else hashes.SHA256()


@pytest.mark.parametrize("key_type", ALL_TYPES)
def test_generate_sign_verify(keystore: KeyStore, key_type: KeyType) -> None:
    key = keystore.generate(key_type, f"key-{key_type.value}")
    public = key.public_key()
    message = b"idmint signs this"
    if isinstance(key, HSMEllipticCurvePrivateKey):
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert (
            key.curve.name == {KeyType.EC_P256: "secp256r1", KeyType.EC_P384: "secp384r1"}[key_type]
        )
        algorithm = _hash_for(key_type)
        assert algorithm is not None
        signature = key.sign(message, ec.ECDSA(algorithm))
        public.verify(signature, message, ec.ECDSA(algorithm))
        digest = hashes.Hash(algorithm)
        digest.update(message)
        prehashed = key.sign(digest.finalize(), ec.ECDSA(Prehashed(algorithm)))
        public.verify(prehashed, message, ec.ECDSA(algorithm))
    elif isinstance(key, HSMRSAPrivateKey):
        assert isinstance(public, rsa.RSAPublicKey)
        assert key.key_size == key_type.size
        pkcs1 = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        public.verify(pkcs1, message, padding.PKCS1v15(), hashes.SHA256())
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        public.verify(key.sign(message, pss, hashes.SHA256()), message, pss, hashes.SHA256())
    else:
        assert isinstance(key, HSMEd25519PrivateKey)
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(key.sign(message), message)


@pytest.mark.parametrize("key_type", ALL_TYPES)
def test_security_attributes_read_back(keystore: KeyStore, key_type: KeyType) -> None:
    key = keystore.generate(key_type, f"attrs-{key_type.value}")
    (info,) = [i for i in keystore.list_keys() if i.key_id == key.key_id]
    assert info.key_type is key_type
    assert info.label == f"attrs-{key_type.value}"
    assert (info.token, info.private, info.sensitive) == (True, True, True)
    assert (info.extractable, info.always_sensitive, info.never_extractable) == (False, True, True)
    assert info.uri.startswith(f"pkcs11:token={keystore.token_label};object=attrs-")


def test_private_key_cannot_be_exported(keystore: KeyStore) -> None:
    key = keystore.generate(KeyType.EC_P256, "no-export")
    with pytest.raises(UnsupportedMechanism, match="not extractable"):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    assert isinstance(key, HSMEllipticCurvePrivateKey)
    with pytest.raises(UnsupportedMechanism, match="not extractable"):
        key.private_numbers()


def test_keys_are_unique_ids_and_found_by_label_id_and_uri(keystore: KeyStore) -> None:
    first = keystore.generate(KeyType.EC_P256, "one")
    second = keystore.generate(KeyType.EC_P256, "two")
    assert first.key_id != second.key_id and len(first.key_id) == 16
    assert keystore.get("one").key_id == first.key_id
    assert keystore.get(key_id=second.key_id).key_id == second.key_id
    assert keystore.get(uri=second.uri).key_id == second.key_id
    assert keystore.get(uri=keystore.uri_for("one", first.key_id)).key_id == first.key_id
    keystore.destroy(first.key_id)
    assert [i.label for i in keystore.list_keys()] == ["two"]


JWS_CASES = [
    ("ES256", KeyType.EC_P256),
    ("ES384", KeyType.EC_P384),
    ("RS256", KeyType.RSA_2048),
    ("PS256", KeyType.RSA_2048),
    ("EdDSA", KeyType.ED25519),
]


@pytest.mark.parametrize(("alg", "key_type"), JWS_CASES, ids=[c[0] for c in JWS_CASES])
def test_jws_signatures_verify_in_pyjwt(keystore: KeyStore, alg: str, key_type: KeyType) -> None:
    import base64
    import json

    import jwt

    key = keystore.generate(key_type, f"jws-{alg}")
    header = {"alg": alg, "typ": "JWT", "kid": "k1"}
    claims = {"sub": "spiffe://example.org/w", "aud": "a"}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = key.sign_jws(alg, signing_input.encode())
    if alg.startswith("ES"):
        assert len(signature) == {"ES256": 64, "ES384": 96}[alg]  # raw r||s, not DER
    token = f"{signing_input}.{b64(signature)}"
    decoded = jwt.decode(token, key.public_key(), algorithms=[alg], audience="a")
    assert decoded == claims


def test_jws_algorithm_must_fit_the_key(keystore: KeyStore) -> None:
    key = keystore.generate(KeyType.EC_P256, "p256")
    with pytest.raises(UnsupportedMechanism, match="ES384 needs curve P-384"):
        key.sign_jws("ES384", b"x")
    with pytest.raises(UnsupportedMechanism, match="cannot be used with a ec-p256 key"):
        key.sign_jws("RS256", b"x")


@pytest.mark.parametrize("key_type", ALL_TYPES)
def test_cryptography_builders_sign_with_hsm_keys(
    keystore: KeyStore, key_type: KeyType, tmp_path: Path
) -> None:
    """Certificate, CSR, CRL and OCSP builders sign with the HSM key; OpenSSL agrees."""
    key = keystore.generate(key_type, f"builder-{key_type.value}")
    algorithm = _hash_for(key_type)
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {key_type.value}")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, algorithm)
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(now)
        .next_update(now + timedelta(minutes=10))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(42).revocation_date(now).build()
        )
        .sign(key, algorithm)
    )
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=certificate,
            issuer=certificate,
            algorithm=hashes.SHA256(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=now,
            next_update=now + timedelta(minutes=5),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, certificate)
        .sign(key, algorithm)
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(certificate.public_bytes(pem))
    (tmp_path / "req.pem").write_bytes(csr.public_bytes(pem))
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(pem))

    def openssl(*args: str) -> str:
        done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    ca = str(tmp_path / "ca.pem")
    assert "OK" in openssl("verify", "-CAfile", ca, ca)
    assert "verify OK" in openssl("req", "-in", str(tmp_path / "req.pem"), "-verify", "-noout")
    assert "verify OK" in openssl("crl", "-in", str(tmp_path / "crl.pem"), "-CAfile", ca, "-noout")
    assert csr.is_signature_valid
    assert crl.is_signature_valid(key.public_key())
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    # The OCSP response signature, checked with the public key directly.
    public = key.public_key()
    data, signature = response.tbs_response_bytes, response.signature
    if isinstance(public, ec.EllipticCurvePublicKey):
        assert algorithm is not None
        public.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(public, rsa.RSAPublicKey):
        assert algorithm is not None
        public.verify(signature, data, padding.PKCS1v15(), algorithm)
    else:
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, data)
