"""CRLs built incrementally and published off the request path, checked by openssl.

Revocations are written through a second ``Database`` (another worker or
replica); the CRL is parsed and its signature verified by ``openssl crl``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idmint.ca.authority.authorities import active, signing_key
from idmint.ca.revocation.crl import (
    CRLPublisher,
    RevokedSerials,
    _row_entry,
    build_crl,
    reason_flag,
    revoked_entry,
    sign_crl,
)
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuthorityKind, CredentialKind, Revocation
from idmint.ca.x509.profiles import random_serial
from idmint.hsm import KeyStore

NOW = datetime.now(UTC)


@pytest.fixture
def other(database_url: str) -> Iterator[Database]:
    second = Database(database_url)
    yield second
    second.close()


@pytest.fixture
def ca(
    keystore: KeyStore, database: Database, authorities: None
) -> tuple[int, x509.Certificate, object]:
    row = active(database, AuthorityKind.INTERMEDIATE)
    assert row.certificate_pem is not None
    certificate = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    return row.id, certificate, signing_key(keystore, row)


def _revoke(
    database: Database,
    authority_id: int,
    count: int = 1,
    lives: timedelta = timedelta(minutes=10),
    reason: str = "unspecified",
    row_id: int | None = None,
) -> list[int]:
    serials = [random_serial() for _ in range(count)]
    with database.session() as session:
        for serial in serials:
            session.add(
                Revocation(
                    id=row_id,
                    kind=CredentialKind.X509,
                    identifier=format(serial, "x"),
                    authority_id=authority_id,
                    reason=reason,
                    revoked_at=NOW,
                    not_after=NOW + lives,
                )
            )
    return serials


def _listed(serials: RevokedSerials, ca: tuple[int, x509.Certificate, object]) -> list[int]:
    der = sign_crl(ca[1], ca[2], serials.entries(), NOW)
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(ca[1].public_key())  # type: ignore[arg-type]
    return sorted(e.serial_number for e in crl)


def _openssl_serials(der: bytes, certificate: x509.Certificate, tmp_path: Path) -> set[int]:
    """The serials ``openssl crl`` lists, after it verified the signature."""
    (tmp_path / "crl.der").write_bytes(der)
    (tmp_path / "ca.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    shown = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-noout", "-text",
         "-CAfile", str(tmp_path / "ca.pem")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "verify OK" in shown.stderr + shown.stdout, shown.stderr
    return {
        int(line.split(":", 1)[1].strip(), 16)
        for line in shown.stdout.splitlines()
        if line.strip().startswith("Serial Number:")
    }


def test_a_crl_lists_revocations_made_before_the_request(
    request: pytest.FixtureRequest,
    database: Database,
    other: Database,
    ca: tuple[int, x509.Certificate, object],
    tmp_path: Path,
) -> None:
    authority_id, certificate, _ = ca
    first = _revoke(other, authority_id, 3, reason="keyCompromise")
    publisher = CRLPublisher(database, poll_seconds=0.05)
    request.addfinalizer(publisher.close)
    assert _openssl_serials(publisher.der(*ca), certificate, tmp_path) == set(first)
    # Made through another worker: the next request sees it at once.
    second = _revoke(other, authority_id, 2)
    assert _openssl_serials(publisher.der(*ca), certificate, tmp_path) == set(first + second)
    crl = x509.load_der_x509_crl(publisher.der(*ca))
    entry = crl.get_revoked_certificate_by_serial_number(first[0])
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )


def test_the_background_builder_follows_other_workers(
    request: pytest.FixtureRequest,
    database: Database,
    other: Database,
    ca: tuple[int, x509.Certificate, object],
) -> None:
    publisher = CRLPublisher(database, poll_seconds=0.05)
    request.addfinalizer(publisher.close)
    publisher.der(*ca)
    serial = _revoke(other, ca[0])[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        published = publisher._published
        assert published is not None
        found = x509.load_der_x509_crl(published.der).get_revoked_certificate_by_serial_number(
            serial
        )
        if found is not None:
            return
        time.sleep(0.05)
    raise AssertionError("the builder did not pick up the new revocation without a request")


def test_incremental_reads_match_a_full_build_and_expired_serials_drop_out(
    database: Database, other: Database, ca: tuple[int, x509.Certificate, object]
) -> None:
    authority_id, certificate, key = ca
    short = _revoke(other, authority_id, 5, lives=timedelta(minutes=3))
    long = _revoke(other, authority_id, 5, lives=timedelta(hours=1))
    serials = RevokedSerials(authority_id)
    serials.update(database, NOW)
    late = _revoke(other, authority_id, 4)
    serials.update(database, NOW)
    serials.update(database, NOW)  # nothing new: nothing listed twice
    assert _listed(serials, ca) == sorted(short + long + late)
    # The same CRL entries as the bare builder makes from the rows.
    full = build_crl(
        certificate, key, [(format(s, "x"), NOW, "unspecified") for s in short + long + late], NOW
    )
    assert {e.serial_number for e in x509.load_der_x509_crl(full)} == set(short + long + late)
    serials.update(database, NOW + timedelta(minutes=20))
    assert _listed(serials, ca) == sorted(long)


def test_a_revocation_committed_late_with_a_lower_id_is_not_missed(
    database: Database, other: Database, ca: tuple[int, x509.Certificate, object]
) -> None:
    """PostgreSQL hands out ids before commit: a lower id can appear after a higher one."""
    authority_id = ca[0]
    high = _revoke(other, authority_id, row_id=500)
    serials = RevokedSerials(authority_id)
    serials.update(database, NOW)
    low = _revoke(other, authority_id, row_id=400)
    serials.update(database, NOW)
    assert _listed(serials, ca) == sorted(high + low)


def test_the_lean_crl_reads_as_the_builder_s_own(
    ca: tuple[int, x509.Certificate, object], tmp_path: Path
) -> None:
    """Serials of every length (high bit set), reasons, dates: cryptography and openssl agree."""
    _, certificate, key = ca
    moment = datetime(2026, 5, 17, 8, 30, 15, tzinfo=UTC)
    rows = [
        (format(serial, "x"), moment + timedelta(seconds=n), reason)
        for n, (serial, reason) in enumerate(
            [(1, "unspecified"), (0x80, "keyCompromise"), (0xFF, "superseded"),
             (2**159 - 1, "affiliationChanged"), (2**127, "cessationOfOperation"),
             *((random_serial(), "unspecified") for _ in range(300))]
        )
    ]  # fmt: skip
    der = build_crl(certificate, key, rows, NOW)
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(certificate.public_key())  # type: ignore[arg-type]
    assert crl.issuer == certificate.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > 0
    listed = {e.serial_number: e for e in crl}
    assert set(listed) == {int(s, 16) for s, _, _ in rows}
    for serial, at, reason in rows:
        entry = listed[int(serial, 16)]
        assert entry.revocation_date_utc == at
        reasons = [e.value.reason for e in entry.extensions if isinstance(e.value, x509.CRLReason)]
        assert reasons == ([] if reason == "unspecified" else [reason_flag(reason)])
    assert _openssl_serials(der, certificate, tmp_path) == {int(s, 16) for s, _, _ in rows}
    # No revocations: the list is absent (RFC 5280 section 5.1.2.6), the CRL still valid.
    empty = x509.load_der_x509_crl(build_crl(certificate, key, [], NOW))
    assert len(empty) == 0 and empty.is_signature_valid(certificate.public_key())  # type: ignore[arg-type]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    serials=st.lists(st.integers(min_value=1, max_value=2**159 - 1), min_size=1, max_size=20),
    moments=st.lists(
        st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(2099, 12, 31)),
        min_size=1,
        max_size=20,
    ),
    reasons=st.lists(st.sampled_from(["unspecified", "keyCompromise", "superseded"]), min_size=1),
    seconds_only=st.booleans(),
)
def test_entries_from_sqlite_text_read_as_cryptography_reads_them(
    ca: tuple[int, x509.Certificate, object],
    serials: list[int],
    moments: list[datetime],
    reasons: list[str],
    seconds_only: bool,
) -> None:
    """The fast path (serial hex and SQLite's datetime text, never parsed) lists what
    the datetime path does: serial, revocationDate (UTCTime or, from 2050,
    GeneralizedTime) and reason as cryptography's parser reads them."""
    _, certificate, key = ca
    form = "%Y-%m-%d %H:%M:%S" if seconds_only else "%Y-%m-%d %H:%M:%S.%f"
    rows = [
        (format(serial, "x"), moments[n % len(moments)], reasons[n % len(reasons)])
        for n, serial in enumerate(dict.fromkeys(serials))
    ]
    fast = [_row_entry(s, at.strftime(form), reason) for s, at, reason in rows]
    assert fast == [revoked_entry(int(s, 16), at, reason) for s, at, reason in rows]
    crl = x509.load_der_x509_crl(sign_crl(certificate, key, fast, NOW))
    listed = {e.serial_number: e for e in crl}
    for serial, at, reason in rows:
        entry = listed[int(serial, 16)]
        assert entry.revocation_date_utc == at.replace(microsecond=0, tzinfo=UTC)
        reasons_read = [
            e.value.reason for e in entry.extensions if isinstance(e.value, x509.CRLReason)
        ]
        assert reasons_read == ([] if reason == "unspecified" else [reason_flag(reason)])
