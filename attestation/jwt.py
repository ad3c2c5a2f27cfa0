"""Verifying third-party JWTs (CI OIDC tokens, Kubernetes service-account tokens).

RFC 7515/7519 with the checks RFC 8725 (JWT best practices) asks for: an
explicit algorithm allow-list (never ``none``, never HMAC with a public
key), the key chosen by ``kid`` from the issuer's JWKS, no critical header
we do not understand, then ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat``
with a small leeway. JWKs are loaded and signatures checked with josepy.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import josepy

from idmint.attestation.base import AttestationFailed

ASYMMETRIC_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "ES384"})
#: Replay keys outlive the token by the leeway it is accepted with.
LEEWAY = timedelta(seconds=60)
# Strict base64url, no padding: anything else is not a JWS segment, and a
# lenient decoder would let the same token be written many ways.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


def _b64decode(part: str, what: str) -> bytes:
    if not _SEGMENT.fullmatch(part):
        raise AttestationFailed(f"the token's {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise AttestationFailed(f"the token's {what} is not base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise AttestationFailed(f"the token's {what} is not JSON") from None
    if not isinstance(value, dict):
        raise AttestationFailed(f"the token's {what} is not a JSON object")
    return value


def load_jwks(jwks: Mapping[str, Any]) -> dict[str, josepy.JWK]:
    """kid -> JWK from a JWKS document; keys without kid are skipped."""
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise AttestationFailed("the JWKS has no 'keys' list")
    loaded: dict[str, josepy.JWK] = {}
    for item in keys:
        if not isinstance(item, dict) or "kid" not in item or item.get("use", "sig") != "sig":
            continue
        try:
            loaded[str(item["kid"])] = josepy.JWK.from_json(item)  # type: ignore[assignment]
        except (josepy.errors.DeserializationError, KeyError, TypeError, ValueError):
            continue  # a key type we do not use (e.g. a symmetric key) is not an error
    return loaded


@dataclass(frozen=True)
class VerifiedJWT:
    header: dict[str, Any]
    claims: dict[str, Any]


def verify_jwt(
    token: str,
    keys: Mapping[str, josepy.JWK],
    issuer: str,
    audience: str,
    now: datetime,
    leeway: timedelta = timedelta(seconds=60),
    algorithms: frozenset[str] = ASYMMETRIC_ALGS,
    max_lifetime: timedelta | None = None,
) -> VerifiedJWT:
    """Verify a compact JWS JWT; raise :class:`AttestationFailed` naming the problem."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise AttestationFailed("the token is not a compact JWT (three dot-separated parts)")
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = _json_object(_b64decode(header_b64, "header"), "header")
    alg = header.get("alg")
    if alg not in algorithms:
        raise AttestationFailed(
            f"token algorithm {alg!r} is not allowed; allowed: {', '.join(sorted(algorithms))}"
        )
    if "crit" in header:
        raise AttestationFailed(f"token has critical header parameters {header['crit']!r}")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise AttestationFailed(f"token key id {kid!r} is not in the issuer's JWKS")
    signature = _b64decode(signature_b64, "signature")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    if not _key_fits(alg, key):
        raise AttestationFailed(f"token algorithm {alg} does not fit the key {kid!r}")
    try:
        valid = josepy.JWASignature.from_json(alg).verify(key.key, signing_input, signature)
    except Exception:  # josepy raises assorted errors on mismatched keys: all mean "invalid"
        valid = False
    if not valid:
        raise AttestationFailed("token signature does not verify with the issuer's key")
    claims = _json_object(_b64decode(payload_b64, "payload"), "payload")
    _check_claims(claims, issuer, audience, now, leeway, max_lifetime)
    return VerifiedJWT(header, claims)


def as_datetime(timestamp: float) -> datetime:
    """A NumericDate as an aware datetime, clamped to what datetime can hold."""
    from datetime import UTC

    return datetime.fromtimestamp(min(max(timestamp, 0.0), 253402214400.0), UTC)


def _numeric(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AttestationFailed(f"token claim {name!r} is missing or not a number")
    return float(value)


def _check_claims(
    claims: Mapping[str, Any],
    issuer: str,
    audience: str,
    now: datetime,
    leeway: timedelta,
    max_lifetime: timedelta | None,
) -> None:
    if claims.get("iss") != issuer:
        raise AttestationFailed(f"token issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in audiences:
        raise AttestationFailed(f"token audience {aud!r} does not include {audience!r}")
    moment, slack = now.timestamp(), leeway.total_seconds()
    exp = _numeric(claims, "exp", required=True)
    assert exp is not None
    if moment > exp + slack:
        raise AttestationFailed(f"token expired at {as_datetime(exp).isoformat()}")
    nbf = _numeric(claims, "nbf", required=False)
    if nbf is not None and moment + slack < nbf:
        raise AttestationFailed("token is not valid yet (nbf is in the future)")
    iat = _numeric(claims, "iat", required=False)
    if iat is not None and moment + slack < iat:
        raise AttestationFailed("token was issued in the future (iat); check the clocks")
    if max_lifetime is not None and iat is not None and exp - iat > max_lifetime.total_seconds():
        raise AttestationFailed(
            f"token lifetime {int(exp - iat)}s exceeds {int(max_lifetime.total_seconds())}s"
        )


def replay_key(prefix: str, claims: Mapping[str, Any], token: str) -> str:
    """The once-only key of a token: its jti, or else the digest of what was signed.

    Not the digest of the whole token: signatures have more than one valid
    encoding (ECDSA's (r, n - s)), so the same claims could come back with
    other bytes.
    """
    import hashlib

    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        return f"{prefix}:jti:{claims.get('iss')}:{jti}"
    signed = token.rsplit(".", 1)[0]
    return f"{prefix}:sha256:{hashlib.sha256(signed.encode()).hexdigest()}"


def _key_fits(alg: str, key: josepy.JWK) -> bool:
    if alg.startswith("ES"):
        return isinstance(key, josepy.JWKEC)
    return isinstance(key, josepy.JWKRSA)
