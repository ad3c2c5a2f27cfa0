"""Certificate revocation lists (RFC 5280 section 5), signed in the HSM.

One CRL per issuing authority, for the serials it issued that are revoked
and not yet expired: a serial leaves the CRL once its certificate expires,
so CRLs stay as small as the credentials are short-lived. The CRL number
is the signing time in milliseconds, so it rises across rebuilds and
replicas without coordination. nextUpdate is a few minutes ahead.

Serving: :class:`CRLPublisher` keeps each worker's CRL built and signed in a
background thread, rebuilt when a revocation is added (anywhere: it watches
the database) or half its validity has passed. Requests get the DER it holds;
one that sees a revocation newer than that DER waits for the rebuild, so a
CRL fetched after a revocation lists it.

Building: everything but the list of revoked serials comes from
cryptography's ``CertificateRevocationListBuilder`` (an empty CRL with the
same issuer, times, extensions and signature algorithm); the list is
spliced into its TBSCertList and the result signed with the authority's
key. Each list entry is a fixed three-field DER SEQUENCE (serial, UTCTime,
optional reasonCode), made once when the revocation is first read and kept,
as bytes, until the serial expires. Why not a ``RevokedCertificate`` object
per serial: making them was 3/4 of a bare cryptography build (1.1 s per
100,000), they take ~210 bytes each (1M revoked: 760 MB peak RSS in all),
and every rebuild would make them again. Every CRL is parsed back by
cryptography in the tests and checked by openssl.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sqlalchemy import func, select

from idmint.ca.errors import CRLBuildError
from idmint.ca.storage.db import Database, driver_sql, time_binder
from idmint.ca.storage.models import Revocation
from idmint.ca.x509.profiles import signature_hash

NEXT_UPDATE = timedelta(minutes=5)
_REASONS = {
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
}
# CRLReason codes (RFC 5280 section 5.3.1).
_REASON_CODES = {"keyCompromise": 1, "affiliationChanged": 3, "superseded": 4,
                 "cessationOfOperation": 5}  # fmt: skip
log = logging.getLogger("idmint.crl")


def reason_flag(reason: str) -> x509.ReasonFlags | None:
    return _REASONS.get(reason)


def _length(n: int) -> bytes:
    """A DER length (X.690 section 8.1.3)."""
    if n < 0x80:
        return bytes((n,))
    size = (n.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + n.to_bytes(size, "big")


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at ``offset``."""
    first = data[offset + 1]
    if first < 0x80:
        return data[offset], offset + 2, offset + 2 + first
    size = first & 0x7F
    start = offset + 2 + size
    return data[offset], start, start + int.from_bytes(data[offset + 2 : start], "big")


# crlEntryExtensions holding one non-critical reasonCode (OID 2.5.29.21).
_EXTENSIONS = {
    name: _tlv(0x30, _tlv(0x30, b"\x06\x03\x55\x1d\x15" + _tlv(0x04, bytes((0x0A, 1, code)))))
    for name, code in _REASON_CODES.items()
}


def revoked_entry(serial: int, revoked_at: datetime, reason: str) -> bytes:
    """One revokedCertificates entry (RFC 5280 section 5.1.2.6) in DER.

    ``serial`` is one this CA issued: positive, at most 20 octets.
    """
    if revoked_at.tzinfo is not None:
        revoked_at = revoked_at.astimezone(UTC).replace(tzinfo=None)
    number = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    if 1950 <= revoked_at.year < 2050:  # UTCTime through 2049 (section 4.1.2.5)
        when = b"\x17\x0d" + revoked_at.strftime("%y%m%d%H%M%SZ").encode()
    else:
        when = b"\x18\x0f" + revoked_at.strftime("%Y%m%d%H%M%SZ").encode()
    content = b"\x02" + bytes((len(number),)) + number + when + _EXTENSIONS.get(reason, b"")
    return b"\x30" + bytes((len(content),)) + content


#: revocationDate DER by the text SQLite holds, to the second (bulk revocations share it).
_times: dict[str, bytes] = {}


def _time_der(value: Any) -> bytes:
    """revocationDate as DER from a database value (naive UTC text on SQLite, or a datetime).

    SQLite's text (``YYYY-MM-DD HH:MM:SS[.ffffff]``, as SQLAlchemy writes
    it) is cut into a UTCTime without parsing: parsing and strftime were
    most of the cost of a 100,000-entry CRL.
    """
    if isinstance(value, str) and len(value) in (19, 26) and value[10] == " ":
        second = value[:19]
        found = _times.get(second)
        if found is None:
            if not "1950" <= second[:4] < "2050":
                return _time_der(_naive_utc(value))
            if len(_times) >= 100_000:
                _times.clear()
            text = second[2:4] + second[5:7] + second[8:10] + second[11:13] + second[14:16]
            found = _times[second] = b"\x17\x0d" + (text + second[17:19] + "Z").encode()
        return found
    moment = _naive_utc(value)
    if 1950 <= moment.year < 2050:  # UTCTime through 2049 (section 4.1.2.5)
        return b"\x17\x0d" + moment.strftime("%y%m%d%H%M%SZ").encode()
    return b"\x18\x0f" + moment.strftime("%Y%m%d%H%M%SZ").encode()


def _row_entry(identifier: str, revoked_at: Any, reason: str) -> bytes:
    """:func:`revoked_entry` from a revocations row as the database driver returns it.

    Called once per revoked serial on a first build (a million times for a
    1M CRL), so the usual case (SQLite text, a serial with no leading zero
    nibble) is written out here rather than through helpers.
    """
    if identifier[:1] in ("", "0"):  # not as this CA writes serials: the long way
        serial = int(identifier or "0", 16)
        number = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    else:
        number = bytes.fromhex(identifier if len(identifier) % 2 == 0 else "0" + identifier)
        if number[0] & 0x80:
            number = b"\x00" + number
    when = _times.get(revoked_at[:19]) if type(revoked_at) is str else None
    if when is None:
        when = _time_der(revoked_at)
    content = b"\x02" + bytes((len(number),)) + number + when + _EXTENSIONS.get(reason, b"")
    return b"\x30" + bytes((len(content),)) + content


_stand_ins: dict[Any, Any] = {}


def _stand_in(public: object) -> Any:
    """A throwaway software key of the issuer key's kind: it signs the template only.

    The template's signature is discarded; what is kept (the signature
    AlgorithmIdentifier) depends on the key type and hash alone.
    """
    if isinstance(public, ec.EllipticCurvePublicKey):
        kind: Any = ("ec", public.curve.name)
    elif isinstance(public, rsa.RSAPublicKey):
        kind = "rsa"
    elif isinstance(public, ed25519.Ed25519PublicKey):
        kind = "ed25519"
    else:
        raise CRLBuildError(f"cannot sign a CRL with a {type(public).__name__} key")
    if kind not in _stand_ins:
        if isinstance(public, ec.EllipticCurvePublicKey):
            _stand_ins[kind] = ec.generate_private_key(public.curve)
        elif kind == "rsa":
            _stand_ins[kind] = rsa.generate_private_key(65537, 2048)
        else:
            _stand_ins[kind] = ed25519.Ed25519PrivateKey.generate()
    return _stand_ins[kind]


def _template(issuer: x509.Certificate, now: datetime) -> bytes:
    """An empty CRL of ``issuer`` from cryptography's builder, signed by a stand-in."""
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject,
        last_update=now,
        next_update=now + NEXT_UPDATE,
        extensions=[
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(int(now.timestamp() * 1000))),
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ),
        ],
    )
    public = issuer.public_key()
    crl = builder.sign(_stand_in(public), signature_hash(public))
    return crl.public_bytes(serialization.Encoding.DER)


def _sign(key: Any, public: object, parts: Sequence[bytes | bytearray]) -> bytes:
    """The signature over the concatenation of ``parts``, as the builder would make it."""
    digest_algorithm = signature_hash(public)
    if isinstance(public, ec.EllipticCurvePublicKey):
        assert digest_algorithm is not None
        digest = hashlib.new(digest_algorithm.name)
        for part in parts:  # hashed in place: no copy of a 50 MB TBSCertList
            digest.update(part)
        return bytes(key.sign(digest.digest(), ec.ECDSA(Prehashed(digest_algorithm))))
    data = b"".join(parts)
    if isinstance(public, rsa.RSAPublicKey):
        return bytes(key.sign(data, padding.PKCS1v15(), digest_algorithm or hashes.SHA256()))
    return bytes(key.sign(data))


def sign_crl(
    issuer: x509.Certificate,
    issuer_key: object,
    entries: Iterable[bytes | bytearray],
    now: datetime,
) -> bytes:
    """The DER CRL of ``issuer`` listing ``entries`` (see :func:`revoked_entry`)."""
    template = _template(issuer, now)
    _, outer, _ = _element(template, 0)
    _, tbs_start, tbs_end = _element(template, outer)
    _, _, algorithm_end = _element(template, tbs_end)
    # The list goes before crlExtensions ([0]), after nextUpdate; absent when empty.
    cut, position = tbs_end, tbs_start
    while position < tbs_end:
        tag, _, end = _element(template, position)
        if tag == 0xA0:
            cut = position
            break
        position = end
    listed = [entry for entry in entries if entry]
    size = sum(len(entry) for entry in listed)
    revoked = [b"\x30" + _length(size), *listed] if listed else []
    body = [template[tbs_start:cut], *revoked, template[cut:tbs_end]]
    tbs_length = sum(len(part) for part in body)
    tbs = [b"\x30" + _length(tbs_length), *body]
    signature = _sign(issuer_key, issuer.public_key(), tbs)
    algorithm = template[tbs_end:algorithm_end]
    bits = b"\x03" + _length(len(signature) + 1) + b"\x00" + signature
    total = len(tbs[0]) + tbs_length + len(algorithm) + len(bits)
    return b"".join([b"\x30" + _length(total), *tbs, algorithm, bits])


def build_crl(
    issuer: x509.Certificate,
    issuer_key: object,
    revoked: Iterable[tuple[str, datetime, str]],
    now: datetime,
) -> bytes:
    """The DER CRL of ``issuer`` listing ``revoked`` (hex serial, time, reason)."""
    entries = [revoked_entry(int(s, 16), at, reason) for s, at, reason in revoked]
    return sign_crl(issuer, issuer_key, entries, now)


def _naive_utc(value: Any) -> datetime:
    # SQLite hands back the naive UTC text SQLAlchemy wrote; PostgreSQL an
    # aware datetime.
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    moment: datetime = value
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


class RevokedSerials:
    """The unexpired revoked X509-SVIDs of one authority, as CRL entries, read incrementally.

    Entries are kept as DER in one buffer per minute in which their
    certificates expire, so dropping expired serials is dropping buffers.
    Revocation ids rise; each update reads those above the highest one
    seen, less a margin: on PostgreSQL ids are handed out before commit,
    so one can become visible after a higher one. Ids within the margin are
    remembered so none is listed twice.
    """

    #: Revocation ids re-read behind the highest seen (see the class docstring).
    MARGIN = 1000

    def __init__(self, authority_id: int) -> None:
        self.authority_id = authority_id
        self.last_id = 0
        self.count = 0
        self._by_minute: dict[int, bytearray] = {}
        self._counts: dict[int, int] = {}
        self._recent: set[int] = set()
        self._minutes: dict[str, int] = {}

    def update(self, database: Database, now: datetime) -> None:
        """Add the revocations made since the last update; drop expired serials."""
        floor = self.last_id - self.MARGIN
        previous = self.last_id
        epoch = datetime(1970, 1, 1)
        minute = timedelta(minutes=1)
        # Locals: a first build runs this loop once per revoked serial.
        recent, by_minute, counts = self._recent, self._by_minute, self._counts
        last = self.last_id
        with database.reading() as session:
            connection = session.connection().execution_options(yield_per=20_000)
            # On SQLite, "+" keeps the (kind, identifier) and not_after indexes out
            # of the plan: with them it looked up every row in serial order, 3.3 s
            # for 1M rows, against 0.86 s for a scan of the id (rowid) range.
            plus = "+" if connection.dialect.name == "sqlite" else ""
            sql = driver_sql(
                connection,
                "SELECT id, identifier, revoked_at, reason, not_after FROM revocations "
                f"WHERE {plus}kind = 'x509' AND authority_id = ? AND id > ? "
                f"AND {plus}not_after > ?",
            )
            result = connection.exec_driver_sql(
                sql, (self.authority_id, floor, time_binder(connection)(now))
            )
            # An explicit size: without it fetchmany() was called once per row.
            for rows in result.partitions(20_000):
                for row_id, identifier, revoked_at, reason, not_after in rows:
                    if row_id <= previous and row_id in recent:
                        continue  # read in an earlier update, within the margin
                    bucket = self._bucket(not_after, epoch, minute)
                    buffer = by_minute.get(bucket)
                    if buffer is None:
                        buffer = by_minute[bucket] = bytearray()
                    buffer += _row_entry(identifier, revoked_at, reason)
                    counts[bucket] = counts.get(bucket, 0) + 1
                    if row_id > last:
                        last = row_id
                # Remembered: the ids that the next update reads again (within the margin).
                recent.update(
                    row[0] for row in rows if row[0] > last - self.MARGIN and row[0] > floor
                )
        self.last_id = last
        keep = self.last_id - self.MARGIN
        self._recent = {n for n in self._recent if n > keep}
        current = (now.astimezone(UTC).replace(tzinfo=None) - epoch) // minute
        for expired in [b for b in self._by_minute if b < current]:
            del self._by_minute[expired]
            del self._counts[expired]
        self._minutes = {k: v for k, v in self._minutes.items() if v >= current}
        self.count = sum(self._counts.values())

    def _bucket(self, not_after: Any, epoch: datetime, minute: timedelta) -> int:
        """The minute (since 1970) in which a certificate expires; SQLite text by its prefix."""
        if isinstance(not_after, str):
            key = not_after[:16]  # "YYYY-MM-DD HH:MM": many serials expire in one minute
            found = self._minutes.get(key)
            if found is None:
                found = self._minutes[key] = (_naive_utc(not_after) - epoch) // minute
            return found
        return (_naive_utc(not_after) - epoch) // minute

    def entries(self) -> list[bytearray]:
        """The DER of every entry held, in buffers (serials expiring this minute included)."""
        return list(self._by_minute.values())


def latest_revocation(database: Database) -> int:
    """The highest revocation id: it rises with every revocation, on any replica."""
    with database.reading() as session:
        return int(session.scalar(select(func.max(Revocation.id))) or 0)


@dataclass(frozen=True)
class _Published:
    authority_id: int
    marker: int
    built_at: float
    der: bytes


class CRLPublisher:
    """One process's CRL of the active issuing authority, rebuilt in a background thread."""

    def __init__(
        self,
        database: Database,
        poll_seconds: float = 1.0,
        clock: Any = None,
    ) -> None:
        self.database = database
        self.poll_seconds = poll_seconds
        self._clock = clock or (lambda: datetime.now(UTC))
        self._condition = threading.Condition()
        self._build_lock = threading.Lock()
        self._signer: tuple[int, x509.Certificate, object] | None = None
        self._published: _Published | None = None
        self._serials: RevokedSerials | None = None
        self._thread: threading.Thread | None = None
        self._wanted = 0
        self._closed = False

    def close(self) -> None:
        """Stop the background builder (it is a daemon thread: processes need not)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def der(
        self, authority_id: int, certificate: x509.Certificate, key: object, wait: float = 30.0
    ) -> bytes:
        """The DER CRL for this authority, listing every revocation committed before the call."""
        marker = latest_revocation(self.database)
        deadline = time.monotonic() + wait
        with self._condition:
            self._signer = (authority_id, certificate, key)
            if not self._closed and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="idmint-crl", daemon=True)
                self._thread.start()
            self._wanted = max(self._wanted, marker)
            self._condition.notify_all()
            while True:
                published = self._published
                if published is not None and self._fresh(published, authority_id, marker):
                    return published.der
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
        log.warning("the CRL builder did not answer in %.0f s; building in the request", wait)
        return self._rebuild(authority_id, certificate, key).der

    def _fresh(self, published: _Published, authority_id: int, marker: int) -> bool:
        return (
            published.authority_id == authority_id
            and published.marker >= marker
            and time.monotonic() - published.built_at < NEXT_UPDATE.total_seconds() / 2
        )

    def _run(self) -> None:
        while True:
            with self._condition:
                if self._closed:
                    return
                signer, published, wanted = self._signer, self._published, self._wanted
                due = signer is not None and (
                    published is None or not self._fresh(published, signer[0], wanted)
                )
                if not due:
                    self._condition.wait(self.poll_seconds)
            if due:
                assert signer is not None
                try:
                    self._rebuild(*signer)
                except Exception:  # HSM or database trouble: keep the old CRL, try again
                    log.exception("building the CRL failed")
                    time.sleep(self.poll_seconds)
                continue
            # Revocations through other workers and replicas are noticed here.
            try:
                marker = latest_revocation(self.database)
            except Exception:
                log.exception("reading the revocation marker failed")
                continue
            with self._condition:
                self._wanted = max(self._wanted, marker)

    def _rebuild(self, authority_id: int, certificate: x509.Certificate, key: object) -> _Published:
        with self._build_lock:
            marker = latest_revocation(self.database)  # read before the rows: never ahead
            serials = self._serials
            if serials is None or serials.authority_id != authority_id:
                serials = self._serials = RevokedSerials(authority_id)
            now = self._clock()
            serials.update(self.database, now)
            der = sign_crl(certificate, key, serials.entries(), now)
            published = _Published(authority_id, marker, time.monotonic(), der)
            with self._condition:
                current = self._published
                if current is None or current.built_at <= published.built_at:
                    self._published = published
                self._condition.notify_all()
            return published
