"""Verifying third-party JWTs (CI OIDC tokens, Kubernetes service-account tokens).

PyJWT does the JWS and the registered claims (RFC 7519 section 4.1): the
algorithm allow-list (RFC 8725 section 3.1: never ``none``, never HMAC with
a public key), the signature, ``crit``, ``iss``, ``aud``, and ``exp``,
``nbf`` and ``iat`` against the clock with a leeway. Three checks are ours:

- strict JSON. PyJWT reads header and payload with ``json.loads``, which
  takes ``NaN``, ``Infinity``, ``1e400`` and a member named twice. None of
  them is JSON (RFC 8259), and RFC 7519 section 4 lets a parser either
  refuse duplicate claims or keep the last: we refuse, so no two readers of
  one token can see different claims. Both parts are read strictly before
  PyJWT sees the token.
- NumericDates are numbers: PyJWT's ``int()`` would also take ``"123"``
  and ``true``.
- a maximum lifetime ``exp - iat`` per issuer (GitHub's tokens live 5
  minutes; a token good for ten years is not a CI token), which needs
  ``iat``.

Anything else PyJWT raises is a bug and is left to surface as a 500.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import josepy
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idmint.attestation.errors import AttestationFailed

ASYMMETRIC_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384"})
#: Clock skew allowed on exp, nbf and iat; replay keys outlive the token by it.
LEEWAY = timedelta(seconds=60)
#: Longer than any CI or service-account token; bounds the work a token costs.
MAX_TOKEN_CHARS = 16 * 1024
MAX_KID_CHARS = 256
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_EC_ALGS = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}
_MAX_SHOWN = 100
#: 9999-12-31T23:59:59Z, the last NumericDate a datetime (and a sane issuer) has.
_MAX_NUMERIC_DATE = 253402300799


class SigningKeys(Protocol):
    """Where the keys of one issuer come from (attestation/jwks.py)."""

    def signing_key(self, kid: str) -> jwt.PyJWK:
        """The key with this kid; raise AttestationFailed if the issuer has none."""
        ...


@dataclass(frozen=True)
class VerifiedJWT:
    header: dict[str, Any]
    claims: dict[str, Any]


class _NotJSON(ValueError):
    """What the strict parser refuses, with the reason for the error text."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _NotJSON(f"it names {name[:40]!r} twice")
            seen.add(name)
    return obj


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(f"{text[:40]} is too large for a number")
    return value


def strict_json(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object, refusing what ``json.loads`` would let through."""
    try:
        value = json.loads(
            raw,
            object_pairs_hook=_unique_members,
            parse_constant=_refuse_constant,
            parse_float=_finite,
        )
    except _NotJSON as exc:
        raise AttestationFailed(f"the token's {what} is not valid JSON: {exc}") from None
    except (UnicodeDecodeError, RecursionError, ValueError):
        raise AttestationFailed(f"the token's {what} is not JSON") from None
    if not isinstance(value, dict):
        raise AttestationFailed(f"the token's {what} is not a JSON object")
    return value


def _part(token: Any, index: int, what: str) -> dict[str, Any]:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise AttestationFailed(
            f"the token must be a compact JWT of at most {MAX_TOKEN_CHARS} characters"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise AttestationFailed("the token is not a compact JWT (three dot-separated parts)")
    part = parts[index]
    # PyJWT decodes strictly later; josepy's decoder skips foreign characters.
    if not part or not _BASE64URL.issuperset(part) or len(part) % 4 == 1:
        raise AttestationFailed(f"the token's {what} is not base64url")
    return strict_json(josepy.b64.b64decode(part), what)


def unverified_header(token: Any) -> dict[str, Any]:
    """The JOSE header, read strictly, before any signature check."""
    return _part(token, 0, "header")


def unverified_claims(token: Any) -> dict[str, Any]:
    """The claims, read strictly, before any signature check (to pick the issuer)."""
    return _part(token, 1, "payload")


def _fits(alg: str, key: Any) -> bool:
    if alg.startswith("ES"):
        curve = _EC_ALGS.get(alg)
        return (
            curve is not None
            and isinstance(key, ec.EllipticCurvePublicKey)
            and (isinstance(key.curve, curve))
        )
    return isinstance(key, rsa.RSAPublicKey)


def shown(value: Any) -> str:
    """The repr of an untrusted value, bounded: error texts end up in logs."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[:_MAX_SHOWN]}... ({len(text)} characters)"


def verify_jwt(
    token: Any,
    keys: SigningKeys,
    issuer: str,
    audience: str,
    leeway: timedelta = LEEWAY,
    algorithms: Iterable[str] = ASYMMETRIC_ALGS,
    max_lifetime: timedelta | None = None,
) -> VerifiedJWT:
    """Verify a compact JWS JWT; raise :class:`AttestationFailed` naming the problem.

    Times are checked against the system clock (PyJWT's), the clock the
    server's ``now`` comes from.
    """
    allowed = sorted(algorithms)
    header = unverified_header(token)
    claims = unverified_claims(token)
    exp, iat = _numeric(claims, "exp"), _numeric(claims, "iat")
    _numeric(claims, "nbf")
    alg = header.get("alg")
    if alg not in allowed:
        raise AttestationFailed(
            f"token algorithm {shown(alg)} is not allowed; allowed: {', '.join(allowed)}"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        raise AttestationFailed(
            f"token has no key id (kid, at most {MAX_KID_CHARS} characters) "
            "naming a key of the issuer's JWKS"
        )
    key = keys.signing_key(kid).key
    fitting = [name for name in allowed if _fits(name, key)]
    if alg not in fitting:
        raise AttestationFailed(f"token algorithm {alg} does not fit the key {kid!r}")
    required = ["iss", "aud", "exp"] + (["iat"] if max_lifetime is not None else [])
    try:
        jwt.decode(
            token,
            key,
            algorithms=fitting,
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": required, "enforce_minimum_key_length": True},
        )
    except jwt.InvalidSignatureError:
        raise AttestationFailed("token signature does not verify with the issuer's key") from None
    except jwt.ExpiredSignatureError:
        raise AttestationFailed(f"token expired at {_shown_time(claims.get('exp'))}") from None
    except jwt.ImmatureSignatureError as exc:
        raise AttestationFailed(
            f"token is not valid yet ({exc}); check the clocks of the issuer and this server"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise AttestationFailed(f"token has no {exc.claim!r} claim, which is required") from None
    except jwt.InvalidAudienceError:
        raise AttestationFailed(
            f"token audience {shown(claims.get('aud'))} does not include {audience!r}"
        ) from None
    except jwt.InvalidIssuerError:
        raise AttestationFailed(
            f"token issuer {shown(claims.get('iss'))} is not {issuer!r}"
        ) from None
    except jwt.InvalidKeyError as exc:
        raise AttestationFailed(f"the issuer's key {kid!r} cannot verify tokens: {exc}") from None
    except jwt.InvalidTokenError as exc:
        raise AttestationFailed(f"token is invalid: {exc}") from None
    if max_lifetime is not None and exp is not None and iat is not None:
        limit = max_lifetime.total_seconds()
        if exp - iat > limit:
            raise AttestationFailed(
                f"token lifetime {int(exp - iat)}s (exp - iat) exceeds the {int(limit)}s "
                "this issuer's tokens may live"
            )
    return VerifiedJWT(header, claims)


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, if present; PyJWT's int() would also take "123" and true."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AttestationFailed(f"token claim {name!r} is not a number (a NumericDate)")
    if abs(value) > _MAX_NUMERIC_DATE:  # also keeps float() of a 400-digit int from overflowing
        raise AttestationFailed(f"token claim {name!r} is out of range (after the year 9999)")
    return float(value)


def _shown_time(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return as_datetime(float(value)).isoformat()
    return shown(value)


def as_datetime(timestamp: float) -> datetime:
    """A NumericDate as an aware datetime, clamped to what datetime can hold."""
    return datetime.fromtimestamp(min(max(timestamp, 0.0), 253402214400.0), UTC)


def replay_key(prefix: str, claims: Mapping[str, Any], token: str) -> str:
    """The once-only key of a token: its jti, or else the digest of what was signed.

    Not the digest of the whole token: signatures have more than one valid
    encoding (ECDSA's (r, n - s)), so the same claims could come back with
    other bytes.
    """
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        return f"{prefix}:jti:{claims.get('iss')}:{jti}"
    signed = token.rsplit(".", 1)[0]
    return f"{prefix}:sha256:{hashlib.sha256(signed.encode()).hexdigest()}"
