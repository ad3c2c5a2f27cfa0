"""JWT-SVIDs: issuing and validating SPIFFE's bearer-token SVID.

Follows the SPIFFE JWT-SVID specification (github.com/spiffe/spiffe,
standards/JWT-SVID.md): section 2 (JOSE header: 2.1 ``alg`` from a fixed
list, 2.2 ``kid``, 2.3 ``typ`` ``JWT`` or ``JOSE``), 3 (claims: 3.1 ``sub`` is
the SPIFFE ID, 3.2 ``aud`` required and non-empty, 3.3 ``exp`` required), 4
(signing and validation as RFC 7515 section 5.2) and 5.1 (JWS Compact
Serialization only); with RFC 7515 sections 3.1, 4.1.11 (``crit``) and 4
(unique member names), RFC 7518 section 3 (ES256, ES384, RS256, PS256; raw
``r||s`` ECDSA signatures) and RFC 7519 sections 4.1.3-4.1.7 (``aud``,
``exp``, ``nbf``, ``iat``, ``jti``). Bundle keys are read per the SPIFFE
Trust Domain and Bundle specification, sections 4.1.3 and 4.2.

idmint always sets ``kid`` (optional in the spec): the validator picks the
key by it, so keys can rotate while older tokens are still valid.

Issuing is on the hot path (a JWT costs about 120 µs of which the HSM
signature is about 75 µs), so :func:`encode_jwt_svid` assembles the compact
form itself with a cached header; josepy's ``JWS.sign`` would add about
65 µs. Validating leans on josepy's JWA for the signature check, which also
converts the raw ``r||s`` ECDSA form.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import josepy
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idmint.ca.errors import InvalidJWTSVID
from idmint.ca.spiffe_id import InvalidSpiffeID, SpiffeID, TrustDomain

#: A bundle key that can verify JWT-SVIDs.
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: The JWS algorithms idmint signs and accepts (a subset of JWT-SVID 2.1).
ALGORITHMS = frozenset({"ES256", "ES384", "RS256", "PS256"})
#: How far clocks of issuer and validator may disagree.
DEFAULT_LEEWAY = timedelta(seconds=30)
#: Bundle ``use`` of the keys that sign JWT-SVIDs (Trust Domain and Bundle 4.2.2).
JWT_SVID_USE = "jwt-svid"

# JWT-SVIDs are a few hundred bytes; the cap keeps a hostile token from
# costing more than a bounded amount of decoding work.
_MAX_TOKEN_CHARS = 64 * 1024
_COMPACT = re.compile(r"([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)")
_BASE64URL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}
_CURVE_LABELS = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_MIN_RSA_BITS = 2048
_TYPES = ("JWT", "JOSE")
# Untrusted values are quoted in error texts; keep those texts (and logs) short.
_MAX_SHOWN = 100
# One encoder for every token: json.dumps with separators builds a new
# JSONEncoder on each call, which costs about 0.7 µs on the hot path.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_JWA = {alg: josepy.jwa.JWASignature.from_json(alg) for alg in ALGORITHMS}


class _DuplicateMember(ValueError):
    """A JSON object names a member twice."""


def _shown(value: object) -> str:
    """Return the repr of an untrusted ``value``, shortened if it is long."""
    text = repr(value)
    if len(text) <= _MAX_SHOWN:
        return text
    return f"{text[:_MAX_SHOWN]}... ({len(text)} characters)"


def _b64encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2), as text."""
    return josepy.b64.b64encode(data).decode("ascii")


def _require_aware(moment: datetime, name: str) -> None:
    """Refuse a naive datetime: its timestamp would depend on the host's time zone."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(UTC)), not {moment!r}")


def _utc_text(moment: datetime) -> str:
    """``2026-11-23T08:00:00Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _numeric_date_text(value: float) -> str:
    """A NumericDate as UTC text, or the bare number if no datetime can hold it."""
    try:
        return _utc_text(datetime.fromtimestamp(value, UTC))
    except (OverflowError, ValueError, OSError):
        return repr(value)


@functools.lru_cache(maxsize=64)
def _encoded_header(alg: str, kid: str) -> str:
    """The encoded protected header; the same for every token a key signs."""
    # Checked here, inside the cache, so the hot path pays for it once per key.
    if alg not in ALGORITHMS:
        raise ValueError(f"JWT-SVID alg {alg!r} is not supported; use one of {sorted(ALGORITHMS)}")
    if not isinstance(kid, str) or not kid:
        raise ValueError(f"JWT-SVID kid must be a non-empty string, not {kid!r}")
    return _b64encode(_ENCODER.encode({"alg": alg, "kid": kid, "typ": "JWT"}).encode("ascii"))


def encode_jwt_svid(
    sign: Callable[[bytes], bytes], alg: str, kid: str, claims: Mapping[str, Any]
) -> str:
    """Return the compact JWS of ``claims``; ``sign`` returns the raw JWS signature of its input."""
    # ensure_ascii (the encoder's default) keeps the payload pure ASCII.
    payload = _b64encode(_ENCODER.encode(claims).encode("ascii"))
    signing_input = _encoded_header(alg, kid) + "." + payload
    return signing_input + "." + _b64encode(sign(signing_input.encode("ascii")))


def jwt_svid_claims(
    spiffe_id: str,
    audiences: Sequence[str],
    issuer: str,
    now: datetime,
    ttl: timedelta,
    not_after_cap: datetime | None = None,
) -> dict[str, Any]:
    """Return the claims of a new JWT-SVID; ``exp`` is never after ``not_after_cap``.

    ``spiffe_id`` is trusted to be valid already (registration entries are
    validated when they are written); parsing it again would cost about 7 µs
    on every issuance.
    """
    _require_aware(now, "now")
    # A str is a Sequence[str] too, and would become one audience per letter.
    if isinstance(audiences, str):
        raise InvalidJWTSVID(
            f"JWT-SVID audiences must be a list of strings, not the string {audiences!r}"
        )
    if not audiences:
        raise InvalidJWTSVID("a JWT-SVID needs at least one audience (JWT-SVID spec 3.2)")
    for audience in audiences:
        if not isinstance(audience, str) or not audience:
            raise InvalidJWTSVID(f"JWT-SVID audience {audience!r} is not a non-empty string")
    if ttl <= timedelta(0):
        raise InvalidJWTSVID(f"JWT-SVID TTL must be positive, not {ttl}")
    expires = now + ttl
    if not_after_cap is not None:
        _require_aware(not_after_cap, "not_after_cap")
        # The token would still verify after its key left the bundle's promises.
        expires = min(expires, not_after_cap)
    # int() floors these (post-1970) times, so exp never passes the cap.
    exp, iat = int(expires.timestamp()), int(now.timestamp())
    if exp <= iat:
        raise InvalidJWTSVID(
            f"the JWT signing key may sign only until {_utc_text(expires)}, not after now "
            f"({_utc_text(now)}); rotate the JWT authority"
        )
    return {
        "sub": spiffe_id,
        "aud": list(audiences),
        "exp": exp,
        "iat": iat,
        # 128 random bits: unique without coordination between replicas.
        "jti": secrets.token_urlsafe(16),
        "iss": issuer,
    }


def jwks_keys(jwks: Mapping[str, Any], use: str = JWT_SVID_USE) -> dict[str, PublicKey]:
    """Return kid -> public key for the EC and RSA keys of ``use`` in a SPIFFE bundle JWKS."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise InvalidJWTSVID("the bundle JWKS has no 'keys' list (Trust Domain and Bundle 4.1.3)")
    found: dict[str, PublicKey] = {}
    for index, item in enumerate(keys):
        if not isinstance(item, Mapping):
            raise InvalidJWTSVID(f"bundle JWK #{index} is not a JSON object")
        # The spec says to ignore keys of other (or unknown) uses and of unknown
        # types; symmetric ('oct') keys can never verify a JWT-SVID here either.
        kty = item.get("kty")
        if item.get("use") != use or kty not in ("EC", "RSA"):
            continue
        kid = item.get("kid")
        if kid is None:
            # Tokens name their key by kid; a key without one can never be chosen.
            continue
        if not isinstance(kid, str) or not kid:
            raise InvalidJWTSVID(
                f"bundle JWK #{index} has kid {_shown(kid)}; a kid is a non-empty string"
            )
        if kid in found:
            raise InvalidJWTSVID(
                f"the bundle has two {use} keys with kid {_shown(kid)}; kids must be unique "
                "so that each token names one key"
            )
        if "d" in item:
            raise InvalidJWTSVID(
                f"bundle JWK kid {_shown(kid)} holds private key material ('d'); "
                "a bundle publishes public keys only: treat that key as compromised"
            )
        try:
            jwk = josepy.jwk.JWK.from_json(dict(item))
        except (josepy.errors.Error, KeyError, ValueError, TypeError) as error:
            raise InvalidJWTSVID(
                f"bundle JWK kid {_shown(kid)} is not a valid {kty} public key: {error}"
            ) from None
        if not isinstance(jwk, josepy.jwk.JWKEC | josepy.jwk.JWKRSA):  # pragma: no cover
            raise InvalidJWTSVID(f"bundle JWK kid {_shown(kid)} did not load as an {kty} key")
        # josepy wraps the cryptography key in a ComparableKey and offers no
        # public accessor; '_wrapped' is what josepy itself reads.
        key = getattr(jwk.key, "_wrapped", None)
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise InvalidJWTSVID(f"bundle JWK kid {_shown(kid)} did not load as a public key")
        found[kid] = key
    return found


def validate_jwt_svid(
    token: str,
    audience: str,
    keys: Mapping[str, PublicKey],
    trust_domain: TrustDomain,
    now: datetime,
    leeway: timedelta = DEFAULT_LEEWAY,
    allowed_algs: frozenset[str] = ALGORITHMS,
) -> dict[str, Any]:
    """Return the claims of ``token`` if it is a valid JWT-SVID for ``audience``.

    ``keys`` maps kid to public key (see :func:`jwks_keys`). Raises
    InvalidJWTSVID naming the first problem found; the checks run in a fixed
    order, cheap and key-independent ones first, the signature before any claim
    is trusted.
    """
    _require_aware(now, "now")
    if not isinstance(audience, str) or not audience:
        raise ValueError(f"audience must be a non-empty string, not {audience!r}")
    if leeway < timedelta(0):
        raise ValueError(f"leeway must not be negative, not {leeway}")
    if not allowed_algs <= ALGORITHMS:
        raise ValueError(
            f"allowed_algs may hold only {', '.join(sorted(ALGORITHMS))}; "
            f"got {sorted(allowed_algs - ALGORITHMS)}"
        )
    signing_input, header, claims, signature = _parse(token)
    alg = _check_alg(header, allowed_algs)
    kid, key = _find_key(header, keys)
    if "crit" in header:
        # RFC 7515 4.1.11: a crit extension we do not implement must fail the token.
        raise InvalidJWTSVID(
            f"JWT-SVID has critical header parameters {_shown(header['crit'])} "
            "that are not understood"
        )
    if "typ" in header and header["typ"] not in _TYPES:
        raise InvalidJWTSVID(
            f"JWT-SVID typ {_shown(header['typ'])} is not allowed; it must be 'JWT' or 'JOSE' "
            "(JWT-SVID spec 2.3)"
        )
    _check_key_fits(alg, kid, key)
    if not _JWA[alg].verify(key, signing_input, signature):
        raise InvalidJWTSVID(
            f"JWT-SVID signature does not verify with the {alg} key kid {_shown(kid)}"
        )
    _check_times(claims, now, leeway)
    _check_audience(claims, audience)
    _check_subject(claims, trust_domain)
    return claims


def _parse(token: str) -> tuple[bytes, dict[str, Any], dict[str, Any], bytes]:
    """Split a compact JWS into signing input, header, claims and signature."""
    if not isinstance(token, str):
        raise InvalidJWTSVID(f"JWT-SVID must be a str, not {type(token).__name__}")
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidJWTSVID(
            f"JWT-SVID is {len(token)} characters long; at most {_MAX_TOKEN_CHARS} are accepted"
        )
    match = _COMPACT.fullmatch(token)
    if match is None:
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidJWTSVID(
                f"JWT-SVID is not a compact JWS: it has {len(parts)} dot-separated parts, "
                "not three (header.payload.signature)"
            )
        for name, part in zip(("header", "payload", "signature"), parts, strict=True):
            bad = next((char for char in part if char not in _BASE64URL_CHARS), None)
            if bad is not None:
                raise InvalidJWTSVID(
                    f"JWT-SVID {name} is not base64url: it has the character {bad!r}"
                )
        raise AssertionError("unreachable: every part is base64url")  # pragma: no cover
    header_b64, payload_b64, signature_b64 = match.groups()
    header = _json_object(_b64decode(header_b64, "header"), "header")
    claims = _json_object(_b64decode(payload_b64, "payload"), "payload")
    signature = _b64decode(signature_b64, "signature")
    # The regex allows only ASCII, so this cannot fail.
    signing_input = token[: match.end(2)].encode("ascii")
    return signing_input, header, claims, signature


def _b64decode(part: str, name: str) -> bytes:
    """Decode unpadded base64url already known to hold only base64url characters."""
    # One leftover character carries 6 bits, less than a byte: no encoder emits it.
    if len(part) % 4 == 1:
        raise InvalidJWTSVID(
            f"JWT-SVID {name} is not base64url: its length {len(part)} is impossible"
        )
    try:
        return josepy.b64.b64decode(part)
    except ValueError as error:  # pragma: no cover - excluded above (binascii.Error too)
        raise InvalidJWTSVID(f"JWT-SVID {name} is not base64url: {error}") from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build a JSON object, refusing a member name given twice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateMember(name)
            seen.add(name)
    return obj


def _refuse_constant(name: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON does not have."""
    raise ValueError(f"{name} is not a JSON value")


# RFC 7515 section 4 lets parsers take the last of duplicate members; refusing
# them keeps us from reading a token differently from other validators. One
# decoder for all calls: json.loads with hooks would build a new one each time.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_refuse_constant)


def _json_object(raw: bytes, name: str) -> dict[str, Any]:
    """Parse the UTF-8 JSON object of a header or payload."""
    try:
        # Decoded explicitly: json.loads(bytes) would also accept UTF-16 and UTF-32.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJWTSVID(f"JWT-SVID {name} is not UTF-8") from None
    try:
        value = _DECODER.decode(text)
    except _DuplicateMember as error:
        raise InvalidJWTSVID(f"JWT-SVID {name} has the member {_shown(str(error))} twice") from None
    except RecursionError:
        raise InvalidJWTSVID(f"JWT-SVID {name} is nested too deeply") from None
    except ValueError as error:
        raise InvalidJWTSVID(f"JWT-SVID {name} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidJWTSVID(f"JWT-SVID {name} is a JSON {type(value).__name__}, not an object")
    return value


def _check_alg(header: Mapping[str, Any], allowed_algs: frozenset[str]) -> str:
    """Return the header's alg if it is allowed (JWT-SVID spec 2.1 and 4)."""
    if "alg" not in header:
        raise InvalidJWTSVID("JWT-SVID header has no alg")
    alg = header["alg"]
    if isinstance(alg, str) and alg in allowed_algs:
        return alg
    allowed = ", ".join(sorted(allowed_algs))
    reason = ""
    if alg == "none":
        reason = " (an unsigned token proves nothing)"
    elif isinstance(alg, str) and alg.startswith("HS"):
        # The classic confusion attack: a public key used as an HMAC secret.
        reason = " (HMAC needs a shared secret; bundles publish public keys)"
    raise InvalidJWTSVID(f"JWT-SVID alg {_shown(alg)} is not allowed{reason}; allowed: {allowed}")


def _find_key(header: Mapping[str, Any], keys: Mapping[str, PublicKey]) -> tuple[str, PublicKey]:
    """Return the header's kid and the bundle key it names."""
    if "kid" not in header:
        raise InvalidJWTSVID("JWT-SVID header has no kid; the key cannot be chosen from the bundle")
    kid = header["kid"]
    if not isinstance(kid, str):
        raise InvalidJWTSVID(f"JWT-SVID kid {_shown(kid)} is not a string")
    key = keys.get(kid)
    if key is None:
        raise InvalidJWTSVID(
            f"JWT-SVID kid {_shown(kid)} is not in the trust bundle; "
            "refresh the bundle if the issuer rotated its key"
        )
    return kid, key


def _describe(key: PublicKey) -> str:
    """``an EC P-256 key`` or ``a 2048-bit RSA key``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC {_CURVE_LABELS.get(key.curve.name, key.curve.name)} key"
    if isinstance(key, rsa.RSAPublicKey):
        return f"a {key.key_size}-bit RSA key"
    return f"a {type(key).__name__}"


def _check_key_fits(alg: str, kid: str, key: PublicKey) -> None:
    """Refuse a key that cannot have made an ``alg`` signature (or is too weak)."""
    curve = _EC_CURVES.get(alg)
    if curve is not None:
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curve:
            return
        needed = f"an EC {_CURVE_LABELS[curve]} key"
    else:
        if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS:
            return
        needed = f"an RSA key of at least {_MIN_RSA_BITS} bits"
    raise InvalidJWTSVID(
        f"JWT-SVID alg {alg} needs {needed}, but kid {_shown(kid)} is {_describe(key)}"
    )


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """The claim ``name`` as a NumericDate (RFC 7519 section 2), or None if absent."""
    if name not in claims:
        return None
    value = claims[name]
    # bool is an int in Python, but true is no date.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJWTSVID(f"JWT-SVID {name} {_shown(value)} is not a number (NumericDate)")
    return value


def _clocks(now: datetime, slack: float) -> str:
    """``(now 2026-11-23T08:00:00Z, leeway 30s)``, for error texts only."""
    return f"(now {_utc_text(now)}, leeway {slack:g}s)"


def _check_times(claims: Mapping[str, Any], now: datetime, leeway: timedelta) -> None:
    """exp (required), nbf and iat against ``now`` with ``leeway`` (RFC 7519 4.1.4-4.1.6)."""
    exp = _numeric_date(claims, "exp")
    if exp is None:
        raise InvalidJWTSVID("JWT-SVID has no exp claim (JWT-SVID spec 3.3)")
    moment, slack = now.timestamp(), leeway.total_seconds()
    # Compared without adding to exp: int-float comparison is exact even for
    # integers too large to become a float.
    if moment - slack > exp:
        raise InvalidJWTSVID(f"JWT-SVID expired at {_numeric_date_text(exp)} {_clocks(now, slack)}")
    nbf = _numeric_date(claims, "nbf")
    if nbf is not None and moment + slack < nbf:
        raise InvalidJWTSVID(
            f"JWT-SVID is not valid before {_numeric_date_text(nbf)} {_clocks(now, slack)}"
        )
    iat = _numeric_date(claims, "iat")
    if iat is not None and moment + slack < iat:
        raise InvalidJWTSVID(
            f"JWT-SVID was issued in the future, at {_numeric_date_text(iat)} "
            f"{_clocks(now, slack)}; check the issuer's clock"
        )


def _check_audience(claims: Mapping[str, Any], audience: str) -> None:
    """Refuse a token whose aud does not name ``audience`` (JWT-SVID spec 3.2)."""
    if "aud" not in claims:
        raise InvalidJWTSVID("JWT-SVID has no aud claim (JWT-SVID spec 3.2)")
    aud = claims["aud"]
    # RFC 7519 4.1.3: one string, or an array of strings.
    if isinstance(aud, str):
        audiences = [aud]
    elif isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        audiences = aud
    else:
        raise InvalidJWTSVID(f"JWT-SVID aud {_shown(aud)} is not a string or a list of strings")
    if not audiences or audiences == [""]:
        raise InvalidJWTSVID("JWT-SVID aud is empty; it must name at least one audience")
    if audience not in audiences:
        raise InvalidJWTSVID(f"JWT-SVID audience {_shown(audiences)} does not include {audience!r}")


def _check_subject(claims: Mapping[str, Any], trust_domain: TrustDomain) -> None:
    """Refuse a sub that is not a SPIFFE ID of ``trust_domain`` (JWT-SVID spec 3.1)."""
    if "sub" not in claims:
        raise InvalidJWTSVID("JWT-SVID has no sub claim (JWT-SVID spec 3.1)")
    sub = claims["sub"]
    if not isinstance(sub, str):
        raise InvalidJWTSVID(f"JWT-SVID sub {_shown(sub)} is not a string")
    try:
        spiffe_id = SpiffeID.parse(sub)
    except InvalidSpiffeID as error:
        raise InvalidJWTSVID(f"JWT-SVID sub is not a SPIFFE ID: {error}") from None
    if not spiffe_id.member_of(trust_domain):
        raise InvalidJWTSVID(
            f"JWT-SVID sub {_shown(sub)} is not in trust domain {trust_domain.name!r}"
        )
