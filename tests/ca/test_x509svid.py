"""The X509-SVID leaf profile, with software keys (the profile is pure code).

Leaves are checked three ways: ``openssl verify`` on the chain (strict, for
TLS client and server purposes), a real mutual-TLS handshake in Python's
ssl, and field by field against the SPIFFE X509-SVID spec and RFC 5280.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from idmint.ca.x509.profiles import CLOCK_SKEW, random_serial, root_certificate, signature_hash
from idmint.ca.x509.x509svid import InvalidValidity, leaf_certificate, svid_window
from tests.tls import context, handshake, write_svid

TRUST_DOMAIN = "example.org"
WEB = "spiffe://example.org/web"
DNS = ("web.example.org", "www.example.org")
NOW = datetime.now(UTC).replace(microsecond=0)
CRL_URL = "https://idmint.test/v1/crl"
OCSP_URL = "https://idmint.test/v1/ocsp"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KEY_KINDS = ["p256", "p384", "rsa2048"]


def new_key(kind: str) -> PrivateKey:
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP384R1() if kind == "p384" else ec.SECP256R1())


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its software key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self.key, signature_hash(self.key.public_key()))

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def make_intermediate(
    root: Authority, lifetime: timedelta = timedelta(hours=6), with_ski: bool = True
) -> Authority:
    """A minimal issuing CA under ``root``; ``with_ski=False`` leaves out its SKI."""
    key = ec.generate_private_key(ec.SECP256R1())
    root_ski = root.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test intermediate")]))
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(NOW - CLOCK_SKEW)
        .not_valid_after(NOW + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski.value),
            critical=False,
        )
    )
    if with_ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return Authority(root.sign(builder), key)


@pytest.fixture(scope="module")
def root() -> Authority:
    key = ec.generate_private_key(ec.SECP384R1())
    builder = root_certificate(key.public_key(), TRUST_DOMAIN, NOW, timedelta(days=1))
    return Authority(builder.sign(key, signature_hash(key.public_key())), key)


@pytest.fixture(scope="module")
def intermediate(root: Authority) -> Authority:
    return make_intermediate(root)


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {kind: new_key(kind) for kind in KEY_KINDS}


def issue(
    issuer: Authority,
    key: PrivateKey,
    dns_names: Sequence[str] = DNS,
    serial: int | None = None,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
) -> x509.Certificate:
    not_before, not_after = svid_window(
        NOW, timedelta(minutes=10), issuer.certificate.not_valid_after_utc
    )
    builder = leaf_certificate(
        key.public_key(),
        WEB,
        dns_names,
        issuer.certificate,
        not_before,
        not_after,
        serial or random_serial(),
        crl_url=crl_url,
        ocsp_url=ocsp_url,
    )
    return issuer.sign(builder)


def openssl_verify(
    tmp_path: Path,
    root: Authority,
    chain: list[Authority],
    leaf: x509.Certificate,
    strict: bool = True,
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``openssl verify`` for both TLS purposes (strict: -x509_strict); return the results."""
    (tmp_path / "root.pem").write_text(root.pem)
    (tmp_path / "intermediate.pem").write_text("".join(a.pem for a in chain))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    options = ["-x509_strict"] if strict else []
    return [
        subprocess.run(
            [
                "openssl",
                "verify",
                *options,
                *("-purpose", purpose),
                *("-CAfile", "root.pem", "-untrusted", "intermediate.pem", "leaf.pem"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        for purpose in ("sslclient", "sslserver")
    ]


# -- openssl and a real handshake -------------------------------------------


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_openssl_verifies_the_chain(
    tmp_path: Path,
    root: Authority,
    intermediate: Authority,
    keys: dict[str, PrivateKey],
    kind: str,
) -> None:
    leaf = issue(intermediate, keys[kind], crl_url=CRL_URL, ocsp_url=OCSP_URL)
    for result in openssl_verify(tmp_path, root, [intermediate], leaf):
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "leaf.pem: OK"


def test_openssl_refuses_a_leaf_signed_by_the_wrong_key(
    tmp_path: Path, root: Authority, intermediate: Authority, keys: dict[str, PrivateKey]
) -> None:
    # Shows the check above can fail: same names, signed by another key.
    impostor = Authority(intermediate.certificate, ec.generate_private_key(ec.SECP256R1()))
    leaf = issue(impostor, keys["p256"])
    for result in openssl_verify(tmp_path, root, [intermediate], leaf):
        assert result.returncode != 0
        assert "certificate signature failure" in result.stdout + result.stderr


def test_openssl_verifies_an_issuer_without_ski(
    tmp_path: Path, root: Authority, keys: dict[str, PrivateKey]
) -> None:
    bare = make_intermediate(root, with_ski=False)
    leaf = issue(bare, keys["p256"])
    results = openssl_verify(tmp_path, root, [bare], leaf)
    # -x509_strict wants an SKI in every CA certificate; only the leaf is ours.
    assert all("Missing Subject Key Identifier" in r.stdout + r.stderr for r in results)
    for relaxed in openssl_verify(tmp_path, root, [bare], leaf, strict=False):
        assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr


def test_mutual_tls_handshake(
    tmp_path: Path, root: Authority, intermediate: Authority, keys: dict[str, PrivateKey]
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(root.pem)
    contexts = []
    for side, kind in ((ssl.PROTOCOL_TLS_SERVER, "p256"), (ssl.PROTOCOL_TLS_CLIENT, "rsa2048")):
        leaf = issue(intermediate, keys[kind])
        chain = leaf.public_bytes(serialization.Encoding.PEM).decode() + intermediate.pem
        cert, key = write_svid(tmp_path, kind, chain, keys[kind])
        contexts.append(context(side, cert, key, str(bundle)))
    assert handshake(contexts[0], contexts[1]) == (WEB, WEB)


# -- field by field -----------------------------------------------------------


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_profile_fields(intermediate: Authority, keys: dict[str, PrivateKey], kind: str) -> None:
    key = keys[kind]
    serial = random_serial()
    leaf = issue(intermediate, key, serial=serial)
    extensions = leaf.extensions

    san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert san.get_values_for_type(x509.DNSName) == list(DNS)
    assert len(list(san)) == 1 + len(DNS)

    basic = extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False and basic.value.path_length is None

    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_encipherment is isinstance(key, rsa.RSAPrivateKey)
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_agreement)
    assert not (usage.value.content_commitment or usage.value.data_encipherment)

    eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]

    ski = extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = intermediate.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    assert aki.key_identifier == issuer_ski.digest
    assert aki.authority_cert_issuer is None and aki.authority_cert_serial_number is None

    assert leaf.issuer == intermediate.certificate.subject
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "idmint"
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DNS[0]
    assert leaf.public_key() == key.public_key()
    assert leaf.version is x509.Version.v3

    assert leaf.serial_number == serial
    assert serial > 0
    # DER INTEGER content: the magnitude plus a sign bit (RFC 5280 4.1.2.2: <= 20 octets).
    assert (serial.bit_length() + 8) // 8 <= 20

    assert leaf.not_valid_before_utc == NOW - CLOCK_SKEW
    assert leaf.not_valid_after_utc == NOW + timedelta(minutes=10)
    assert not {x509.CRLDistributionPoints, x509.AuthorityInformationAccess} & {
        type(e.value) for e in extensions
    }


def test_random_serials_are_positive_and_fit_20_octets() -> None:
    serials = {random_serial() for _ in range(2000)}
    assert len(serials) == 2000
    assert all(0 < s and (s.bit_length() + 8) // 8 <= 20 for s in serials)


def test_without_dns_names_subject_is_only_the_organization(
    intermediate: Authority, keys: dict[str, PrivateKey]
) -> None:
    leaf = issue(intermediate, keys["p256"], dns_names=[])
    assert leaf.subject == x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idmint")])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(WEB)]


def test_dns_name_too_long_for_a_cn_is_only_a_san(
    intermediate: Authority, keys: dict[str, PrivateKey]
) -> None:
    long_name = "a" * 60 + ".example.org"
    leaf = issue(intermediate, keys["p256"], dns_names=[long_name])
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [long_name]


def test_crl_and_ocsp_urls_when_given(intermediate: Authority, keys: dict[str, PrivateKey]) -> None:
    leaf = issue(intermediate, keys["p256"], crl_url=CRL_URL, ocsp_url=OCSP_URL)
    crl = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert not crl.critical
    (point,) = crl.value
    assert point.full_name == [x509.UniformResourceIdentifier(CRL_URL)]
    assert point.reasons is None and point.crl_issuer is None
    aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert not aia.critical
    assert list(aia.value) == [
        x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(OCSP_URL)
        )
    ]


def test_only_crl_url(intermediate: Authority, keys: dict[str, PrivateKey]) -> None:
    leaf = issue(intermediate, keys["p256"], crl_url=CRL_URL)
    leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


def test_aki_falls_back_to_the_issuer_key(root: Authority, keys: dict[str, PrivateKey]) -> None:
    bare = make_intermediate(root, with_ski=False)
    leaf = issue(bare, keys["p256"])
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    expected = x509.SubjectKeyIdentifier.from_public_key(bare.key.public_key()).digest
    assert aki.key_identifier == expected


# -- validity window ------------------------------------------------------------


def test_window_backdates_and_keeps_the_ttl() -> None:
    not_before, not_after = svid_window(NOW, timedelta(minutes=10), NOW + timedelta(days=1))
    assert (not_before, not_after) == (NOW - CLOCK_SKEW, NOW + timedelta(minutes=10))
    custom = svid_window(NOW, timedelta(minutes=1), NOW + timedelta(days=1), timedelta(0))
    assert custom == (NOW, NOW + timedelta(minutes=1))


def test_window_is_capped_at_the_issuer_expiry(
    root: Authority, keys: dict[str, PrivateKey]
) -> None:
    expiring = make_intermediate(root, lifetime=timedelta(minutes=3))
    issuer_end = expiring.certificate.not_valid_after_utc
    assert svid_window(NOW, timedelta(minutes=10), issuer_end) == (NOW - CLOCK_SKEW, issuer_end)
    leaf = issue(expiring, keys["p256"])  # issue() asks for 10 minutes
    assert leaf.not_valid_after_utc == issuer_end == NOW + timedelta(minutes=3)


def test_outliving_the_issuer_is_refused(
    intermediate: Authority, keys: dict[str, PrivateKey]
) -> None:
    issuer_end = intermediate.certificate.not_valid_after_utc
    with pytest.raises(InvalidValidity, match="an SVID may not outlive its issuer") as caught:
        leaf_certificate(
            keys["p256"].public_key(),
            WEB,
            DNS,
            intermediate.certificate,
            NOW,
            issuer_end + timedelta(seconds=1),
            random_serial(),
        )
    assert caught.value.code == "invalid-validity"
    # Ending exactly with the issuer is allowed.
    leaf_certificate(
        keys["p256"].public_key(), WEB, DNS, intermediate.certificate, NOW, issuer_end, 1
    )


@pytest.mark.parametrize("length", [timedelta(0), timedelta(seconds=-1)])
def test_empty_window_is_refused(
    intermediate: Authority, keys: dict[str, PrivateKey], length: timedelta
) -> None:
    with pytest.raises(InvalidValidity, match="is not after notBefore"):
        leaf_certificate(
            keys["p256"].public_key(),
            WEB,
            DNS,
            intermediate.certificate,
            NOW,
            NOW + length,
            random_serial(),
        )


def test_naive_times_are_refused(intermediate: Authority, keys: dict[str, PrivateKey]) -> None:
    naive = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match=r"not_before .* has no time zone"):
        leaf_certificate(
            keys["p256"].public_key(),
            WEB,
            DNS,
            intermediate.certificate,
            naive,
            NOW + timedelta(minutes=1),
            random_serial(),
        )


@pytest.mark.parametrize(
    ("spiffe_id", "reason"),
    [
        ("spiffe://example.org", "has no path"),
        ("spiffe://example.org/", "has no path"),
        ("https://example.org/web", "does not start with 'spiffe://'"),
    ],
)
def test_leaf_needs_a_spiffe_id_with_a_path(
    intermediate: Authority, keys: dict[str, PrivateKey], spiffe_id: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        leaf_certificate(
            keys["p256"].public_key(),
            spiffe_id,
            DNS,
            intermediate.certificate,
            NOW,
            NOW + timedelta(minutes=1),
            random_serial(),
        )
