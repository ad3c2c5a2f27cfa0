"""Issuance end to end in-process: real SoftHSM keys, real databases, checked by others' code.

- chains verify with ``openssl verify``;
- two SVIDs complete a mutual-TLS handshake in Python's ssl with the bundle
  as the only trust; another trust domain's SVID and an expired SVID fail;
- JWT-SVIDs validate in PyJWT from the JWKS alone;
- malformed CSRs are refused and write no credential.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import func, select

from idmint.ca.authority.authorities import create_root, ensure_authorities
from idmint.ca.issuance.entries import EntrySpec, EntryStore, NoMatchingEntry
from idmint.ca.issuance.issuer import X509SVID, AudienceNotAllowed, Issuer, X509Request
from idmint.ca.jose.jwtsvid import InvalidJWTSVID, validate_jwt_svid
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuditEvent, IssuedCredential
from idmint.errors import IdmintError
from idmint.hsm import KeyStore
from tests.tls import context, handshake, write_svid

WEB = "spiffe://example.org/web"
API = "spiffe://example.org/api"


def _entry(store: EntryStore, spiffe_id: str, selectors: list[str], **extra: object) -> str:
    spec = EntrySpec(
        spiffe_id=spiffe_id,
        selectors=selectors,
        owner="team",
        expires_at=datetime.now(UTC) + timedelta(days=30),
        **extra,  # type: ignore[arg-type]
    )
    return store.create(spec, actor="test").id


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


@pytest.fixture
def web_entry(entries: EntryStore) -> str:
    return _entry(
        entries,
        WEB,
        ["unix:uid:1000"],
        dns_names=["web.example.org"],
        audiences=["https://api.example.org", "vault"],
    )


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_chain_verifies_in_openssl(issuer: Issuer, web_entry: str, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    svid = issuer.issue_x509(["unix:uid:1000", "extra:ignored"], _csr(key))
    leaf_pem, intermediate_pem = svid.chain_pem.split("-----END CERTIFICATE-----\n")[:2]
    leaf = _write(tmp_path, "svid.pem", leaf_pem + "-----END CERTIFICATE-----\n")
    inter = _write(tmp_path, "int.pem", intermediate_pem + "-----END CERTIFICATE-----\n")
    root = _write(tmp_path, "root.pem", svid.bundle_pem)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", root, "-untrusted", inter, "-purpose", "sslserver", leaf],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    cert = svid.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert san.get_values_for_type(x509.DNSName) == ["web.example.org"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(minutes=10) <= lifetime <= timedelta(minutes=10, seconds=15)
    assert 0 < cert.serial_number < 2**160


def test_rsa_csr_gets_key_encipherment(issuer: Issuer, web_entry: str) -> None:
    key = rsa.generate_private_key(65537, 2048)
    cert = issuer.issue_x509(["unix:uid:1000"], _csr(key)).certificate
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment


def _svid_files(
    tmp_path: Path, name: str, svid: X509SVID, key: ec.EllipticCurvePrivateKey
) -> tuple[str, str]:
    return write_svid(tmp_path, name, svid.chain_pem, key)


_context, _handshake = context, handshake


@pytest.fixture
def two_svids(
    issuer: Issuer, entries: EntryStore, tmp_path: Path
) -> tuple[tuple[str, str], tuple[str, str], str]:
    _entry(entries, WEB, ["unix:uid:1000"])
    _entry(entries, API, ["unix:uid:2000"])
    web_key, api_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
    )
    web = issuer.issue_x509(["unix:uid:1000"], _csr(web_key))
    api = issuer.issue_x509(["unix:uid:2000"], _csr(api_key))
    bundle = _write(tmp_path, "bundle.pem", web.bundle_pem)
    return (
        _svid_files(tmp_path, "web", web, web_key),
        _svid_files(tmp_path, "api", api, api_key),
        bundle,
    )


def test_mutual_tls_with_the_bundle_as_only_trust(
    two_svids: tuple[tuple[str, str], tuple[str, str], str],
) -> None:
    (web_cert, web_key), (api_cert, api_key), bundle = two_svids
    server = _context(ssl.PROTOCOL_TLS_SERVER, api_cert, api_key, bundle)
    client = _context(ssl.PROTOCOL_TLS_CLIENT, web_cert, web_key, bundle)
    client_id, server_id = _handshake(server, client)
    assert (client_id, server_id) == (WEB, API)


@pytest.fixture
def foreign_svid(
    softhsm_dir: Path, token: object, tmp_path: Path, keystore: KeyStore
) -> tuple[str, str]:
    """An SVID from another trust domain (its own CA on the same token, own database)."""
    url = f"sqlite:///{tmp_path / 'other.db'}"
    from idmint.ca.storage.db import migrate

    migrate(url)
    other_db = Database(url)
    create_root(keystore, other_db, "other.org")
    ensure_authorities(keystore, other_db, "other.org")
    other = Issuer(keystore, other_db, TrustDomain("other.org"), "https://other", cache_seconds=0)
    EntryStore(other_db, TrustDomain("other.org")).create(
        EntrySpec(
            "spiffe://other.org/web", ["unix:uid:1000"], "x", datetime.now(UTC) + timedelta(days=1)
        ),
        actor="test",
    )
    key = ec.generate_private_key(ec.SECP256R1())
    svid = other.issue_x509(["unix:uid:1000"], _csr(key))
    other.close()
    other_db.close()
    return _svid_files(tmp_path, "foreign", svid, key)


def test_svid_from_another_trust_domain_is_refused(
    two_svids: tuple[tuple[str, str], tuple[str, str], str], foreign_svid: tuple[str, str]
) -> None:
    (_web_cert, _web_key), (api_cert, api_key), bundle = two_svids
    server = _context(ssl.PROTOCOL_TLS_SERVER, api_cert, api_key, bundle)
    client = _context(ssl.PROTOCOL_TLS_CLIENT, *foreign_svid, bundle)
    with pytest.raises((ssl.SSLError, ConnectionError)) as caught:
        _handshake(server, client)
    assert "certificate" in str(caught.value).lower() or "unknown ca" in str(caught.value).lower()


def test_expired_svid_is_refused(
    keystore: KeyStore, database: Database, trust_domain: TrustDomain, tmp_path: Path
) -> None:
    past = datetime.now(UTC) - timedelta(hours=3)
    create_root(keystore, database, trust_domain.name, now=past)
    ensure_authorities(keystore, database, trust_domain.name, now=past)
    clock = [past]
    issuer = Issuer(
        keystore, database, trust_domain, "https://x", cache_seconds=0, clock=lambda: clock[0]
    )
    store = EntryStore(database, trust_domain)
    _entry(store, WEB, ["unix:uid:1000"])
    _entry(store, API, ["unix:uid:2000"])
    old_key = ec.generate_private_key(ec.SECP256R1())
    expired = issuer.issue_x509(["unix:uid:1000"], _csr(old_key))  # 10 min TTL, 3 h ago
    clock[0] = datetime.now(UTC)
    api_key = ec.generate_private_key(ec.SECP256R1())
    fresh = issuer.issue_x509(["unix:uid:2000"], _csr(api_key))
    issuer.close()
    assert expired.expires_at < datetime.now(UTC)
    bundle = _write(tmp_path, "bundle.pem", fresh.bundle_pem)
    server = _context(
        ssl.PROTOCOL_TLS_SERVER, *_svid_files(tmp_path, "api", fresh, api_key), bundle
    )
    client = _context(
        ssl.PROTOCOL_TLS_CLIENT, *_svid_files(tmp_path, "old", expired, old_key), bundle
    )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(server, client)


def test_jwt_svid_validates_in_pyjwt_from_the_jwks_alone(issuer: Issuer, web_entry: str) -> None:
    svid = issuer.issue_jwt(["unix:uid:1000"], ["https://api.example.org"])
    jwks = issuer.bundle().jwks()
    header = jwt.get_unverified_header(svid.token)
    assert header["typ"] == "JWT" and header["alg"] == "ES256"
    key_set = jwt.PyJWKSet.from_dict({"keys": [k for k in jwks["keys"] if k["use"] == "jwt-svid"]})
    claims = jwt.decode(
        svid.token,
        key_set[header["kid"]].key,
        algorithms=["ES256"],
        audience="https://api.example.org",
        issuer="https://idmint.test",
    )
    assert claims["sub"] == WEB and claims["jti"] == svid.jti
    assert 290 <= claims["exp"] - claims["iat"] <= 300

    from idmint.ca.jose.jwtsvid import jwks_keys

    ours = validate_jwt_svid(
        svid.token,
        "https://api.example.org",
        jwks_keys(jwks),
        TrustDomain("example.org"),
        datetime.now(UTC),
    )
    assert ours["sub"] == WEB
    with pytest.raises(InvalidJWTSVID, match="audience"):
        validate_jwt_svid(
            svid.token, "other", jwks_keys(jwks), TrustDomain("example.org"), datetime.now(UTC)
        )


def test_jwt_audience_must_be_allowed_by_the_entry(issuer: Issuer, web_entry: str) -> None:
    with pytest.raises(AudienceNotAllowed, match="does not allow audience"):
        issuer.issue_jwt(["unix:uid:1000"], ["https://elsewhere"])


def test_disabled_and_unmatched_entries_issue_nothing(
    issuer: Issuer, entries: EntryStore, web_entry: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(NoMatchingEntry):
        issuer.issue_x509(["unix:uid:9999"], _csr(key))
    entries.update(web_entry, {"disabled": True}, actor="test")
    with pytest.raises(NoMatchingEntry):
        issuer.issue_x509(["unix:uid:1000"], _csr(key))
    with pytest.raises(NoMatchingEntry):
        issuer.issue_jwt(["unix:uid:1000"], ["vault"])


CORPUS = sorted(Path(__file__).parent.parent.joinpath("vectors", "csr").glob("bad_*"))


@pytest.mark.parametrize("vector", CORPUS, ids=lambda p: p.name)
def test_malformed_csr_corpus_writes_nothing(
    issuer: Issuer, web_entry: str, database: Database, vector: Path
) -> None:
    with pytest.raises(IdmintError) as caught:
        issuer.issue_x509(["unix:uid:1000"], vector.read_bytes())
    assert str(caught.value)
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(IssuedCredential)) == 0
        refusals = session.scalars(select(AuditEvent).where(AuditEvent.outcome == "refused")).all()
    assert len(refusals) == 1 and refusals[0].action == "x509-svid.issue"


def test_issuance_is_recorded_and_audited(
    issuer: Issuer, web_entry: str, database: Database
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    x = issuer.issue_x509(["unix:uid:1000"], _csr(key))
    j = issuer.issue_jwt(["unix:uid:1000"], ["vault"])
    with database.session() as session:
        rows = {r.identifier: r for r in session.scalars(select(IssuedCredential))}
        actions = [e.action for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
        from idmint.ca.storage.audit import verify_database

        assert verify_database(session).events == len(actions)
    assert set(rows) == {x.serial, j.jti}
    assert rows[x.serial].spiffe_id == WEB and rows[x.serial].entry_id == web_entry
    assert abs((rows[x.serial].not_after - x.expires_at).total_seconds()) < 1
    assert actions[-2:] == ["x509-svid.issue", "jwt-svid.issue"]


def _iter_certs(pem: str) -> Iterator[x509.Certificate]:
    yield from x509.load_pem_x509_certificates(pem.encode())


def test_svid_never_outlives_its_issuer(
    keystore: KeyStore, database: Database, trust_domain: TrustDomain
) -> None:
    create_root(keystore, database, trust_domain.name)
    ensure_authorities(
        keystore, database, trust_domain.name, intermediate_lifetime=timedelta(minutes=3)
    )
    issuer = Issuer(keystore, database, trust_domain, "https://x", cache_seconds=0)
    _entry(EntryStore(database, trust_domain), WEB, ["unix:uid:1000"])
    svid = issuer.issue_x509(["unix:uid:1000"], _csr(ec.generate_private_key(ec.SECP256R1())))
    issuer.close()
    leaf, intermediate = list(_iter_certs(svid.chain_pem))
    assert leaf.not_valid_after_utc <= intermediate.not_valid_after_utc
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc < timedelta(minutes=4)


def test_a_batch_is_recorded_in_one_go_and_each_svid_is_its_own(
    issuer: Issuer, web_entry: str, entries: EntryStore, database: Database
) -> None:
    api_entry = _entry(entries, API, ["unix:uid:2000"])
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    wanted = [
        X509Request(["unix:uid:1000"], _csr(keys[0])),
        X509Request(["unix:uid:2000"], _csr(keys[1])),
        X509Request(["unix:uid:1000"], _csr(keys[2])),
    ]
    svids = issuer.issue_x509_batch(wanted, actor="agent:test")
    assert [s.spiffe_id for s in svids] == [WEB, API, WEB]
    for key, svid in zip(keys, svids, strict=True):
        assert svid.certificate.public_key() == key.public_key()
        assert svid.serial == format(svid.certificate.serial_number, "x")
    with database.reading() as session:
        rows = {r.identifier: r for r in session.scalars(select(IssuedCredential))}
        issued = [
            json.loads(e.detail)["serial"]
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == "x509-svid.issue")
            )
        ]
    assert {s.serial for s in svids} <= set(rows) and {s.serial for s in svids} <= set(issued)
    assert rows[svids[1].serial].entry_id == api_entry


def test_a_batch_with_one_refused_request_records_nothing(
    issuer: Issuer, web_entry: str, database: Database
) -> None:
    def count() -> int:
        with database.reading() as session:
            return int(session.scalar(select(func.count()).select_from(IssuedCredential)) or 0)

    before = count()
    key = ec.generate_private_key(ec.SECP256R1())
    wanted = [
        X509Request(["unix:uid:1000"], _csr(key)),
        X509Request(["unix:uid:4242"], _csr(key)),  # no entry has this selector
    ]
    with pytest.raises(NoMatchingEntry):
        issuer.issue_x509_batch(wanted, actor="agent:test")
    assert count() == before


def test_a_validated_proof_chain_is_reused_only_for_its_roots_and_lifetime(
    issuer: Issuer, web_entry: str
) -> None:
    """verify_proof caches path validation per chain: never across roots or past expiry."""
    from idmint.attestation.base import AttestationFailed
    from idmint.ca.issuance.pop import verify_proof
    from idmint.pop import jwt_payload, make_proof

    key = ec.generate_private_key(ec.SECP256R1())
    svid = issuer.issue_x509(["unix:uid:1000"], _csr(key))
    roots = issuer.bundle().roots

    def prove(at: datetime, trusted: Any) -> str:
        proof = make_proof(svid.chain_pem, key, "jwt-svid", jwt_payload(["a"]), at)
        payload = jwt_payload(["a"])
        return verify_proof(proof, "jwt-svid", payload, trusted, at, lambda _: False).spiffe_id

    now = datetime.now(UTC)
    assert prove(now, roots) == WEB
    assert prove(now, roots) == WEB  # the second time from the cache
    stranger = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "stranger")])
    other_root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(stranger.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(stranger, hashes.SHA256())
    )
    with pytest.raises(AttestationFailed, match="does not chain"):
        prove(now, [other_root])
    with pytest.raises(AttestationFailed, match="does not chain"):
        prove(svid.expires_at + timedelta(seconds=1), roots)
