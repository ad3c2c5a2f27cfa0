"""JWT-SVIDs: tokens we make are read by PyJWT, and our validator refuses bad ones.

The signer is a plain callable, as in production (``HSMPrivateKey.sign_jws``);
here software keys produce the same raw JWS signatures: ``r||s`` for ES*,
PKCS#1 v1.5 for RS256 and PSS with a 32-byte salt for PS256.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import josepy
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from idmint.ca.jose.jwtsvid import (
    ALGORITHMS,
    InvalidJWTSVID,
    encode_jwt_svid,
    jwks_keys,
    jwt_svid_claims,
    validate_jwt_svid,
)
from idmint.ca.spiffe_id import TrustDomain

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

TD = TrustDomain("example.org")
SUB = "spiffe://example.org/ns/prod/sa/web"
AUD = "spiffe://example.org/reports"
ISS = "https://idmint.example.org"
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)

P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
RSA2048 = rsa.generate_private_key(65537, 2048)
RSA1024 = rsa.generate_private_key(65537, 1024)
PRIVATE: dict[str, PrivateKey] = {"ES256": P256, "ES384": P384, "RS256": RSA2048, "PS256": RSA2048}
ALGS = sorted(ALGORITHMS)


def software_signer(private_key: PrivateKey, alg: str) -> Callable[[bytes], bytes]:
    """Return ``sign(signing_input) -> raw JWS signature`` for a software key."""

    def sign(data: bytes) -> bytes:
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            digest = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
            r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(digest)))
            size = (private_key.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if alg == "RS256":
            return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # RFC 7518 3.5 (and the HSM): the salt is as long as the hash.
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return private_key.sign(data, pss, hashes.SHA256())

    return sign


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


#: An override that removes a claim instead of replacing it.
DROP: Any = object()


def claims_at(now: datetime = NOW, **overrides: Any) -> dict[str, Any]:
    claims = jwt_svid_claims(SUB, [AUD], ISS, now, TTL)
    claims.update(overrides)
    for name in [name for name, value in claims.items() if value is DROP]:
        del claims[name]
    return claims


def make(alg: str = "ES256", kid: str = "k1", now: datetime = NOW, **overrides: Any) -> str:
    """A token signed by the key of ``alg``; ``overrides`` replace (or DROP) claims."""
    return encode_jwt_svid(
        software_signer(PRIVATE[alg], alg), alg, kid, claims_at(now, **overrides)
    )


def forge(
    header: dict[str, Any],
    claims: dict[str, Any] | None = None,
    key: PrivateKey = P256,
    alg: str = "ES256",
    raw: bytes | None = None,
) -> str:
    """A token with any header and claims (or ``raw`` payload bytes), signed by ``key``."""
    if raw is None:
        raw = json.dumps(claims_at() if claims is None else claims).encode()
    payload = raw
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    return f"{signing_input}.{b64(software_signer(key, alg)(signing_input.encode()))}"


def keys(alg: str = "ES256") -> dict[str, Any]:
    return {"k1": PRIVATE[alg].public_key()}


def validate(token: str, alg: str = "ES256", **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("now", NOW)
    return validate_jwt_svid(token, AUD, keys(alg), TD, **kwargs)


def josepy_jwks(alg: str, kid: str = "k1") -> dict[str, Any]:
    public = PRIVATE[alg].public_key()
    jwk = josepy.JWKEC(key=public) if alg.startswith("ES") else josepy.JWKRSA(key=public)
    return {"keys": [{**jwk.to_json(), "kid": kid, "use": "jwt-svid"}]}


# -- issuing ---------------------------------------------------------------


def test_token_layout_is_the_compact_serialization() -> None:
    seen: list[bytes] = []

    def sign(data: bytes) -> bytes:
        seen.append(data)
        return b"\x01\x02\x03"

    claims = claims_at()
    token = encode_jwt_svid(sign, "ES256", "k1", claims)
    header, payload, signature = token.split(".")
    assert unb64(header) == b'{"alg":"ES256","kid":"k1","typ":"JWT"}'
    assert unb64(payload) == json.dumps(claims, separators=(",", ":")).encode()
    assert unb64(signature) == b"\x01\x02\x03"
    assert "=" not in token
    assert seen == [f"{header}.{payload}".encode()]


def test_header_follows_alg_and_kid() -> None:
    first = encode_jwt_svid(lambda _: b"s", "ES384", "a", claims_at())
    second = encode_jwt_svid(lambda _: b"s", "RS256", "b", claims_at())
    assert json.loads(unb64(first.split(".")[0])) == {"alg": "ES384", "kid": "a", "typ": "JWT"}
    assert json.loads(unb64(second.split(".")[0])) == {"alg": "RS256", "kid": "b", "typ": "JWT"}


@pytest.mark.parametrize(("alg", "kid"), [("HS256", "k1"), ("none", "k1"), ("ES256", "")])
def test_encode_refuses_unsupported_alg_or_empty_kid(alg: str, kid: str) -> None:
    with pytest.raises(ValueError, match=r"alg 'HS256' is not supported|alg 'none'|kid must be"):
        encode_jwt_svid(lambda _: b"s", alg, kid, claims_at())


def test_claims() -> None:
    claims = jwt_svid_claims(SUB, [AUD, "vault"], ISS, NOW, TTL)
    assert set(claims) == {"sub", "aud", "exp", "iat", "jti", "iss"}
    assert claims["sub"] == SUB and claims["aud"] == [AUD, "vault"] and claims["iss"] == ISS
    assert claims["iat"] == int(NOW.timestamp()) and claims["exp"] == claims["iat"] + 300
    assert len(unb64(claims["jti"])) == 16
    assert claims["jti"] != jwt_svid_claims(SUB, [AUD], ISS, NOW, TTL)["jti"]


def test_exp_is_capped_by_the_key_lifetime() -> None:
    cap = NOW + timedelta(seconds=90, milliseconds=700)
    claims = jwt_svid_claims(SUB, [AUD], ISS, NOW, TTL, not_after_cap=cap)
    assert claims["exp"] == int(NOW.timestamp()) + 90
    later = NOW + timedelta(hours=1)
    assert jwt_svid_claims(SUB, [AUD], ISS, NOW, TTL, later)["exp"] == claims["iat"] + 300


@pytest.mark.parametrize(
    "cap", [NOW, NOW - timedelta(minutes=1), NOW + timedelta(milliseconds=900)]
)
def test_a_key_at_its_end_signs_nothing(cap: datetime) -> None:
    with pytest.raises(InvalidJWTSVID, match=r"may sign only until .* rotate the JWT authority"):
        jwt_svid_claims(SUB, [AUD], ISS, NOW, TTL, not_after_cap=cap)


@pytest.mark.parametrize(
    ("audiences", "reason"),
    [
        ([], "at least one audience"),
        ((), "at least one audience"),
        ("api", "not the string 'api'"),
        (["api", ""], "audience '' is not a non-empty string"),
        (["api", 7], "audience 7 is not"),
    ],
)
def test_claims_refuse_bad_audiences(audiences: Any, reason: str) -> None:
    with pytest.raises(InvalidJWTSVID, match=reason):
        jwt_svid_claims(SUB, audiences, ISS, NOW, TTL)


def test_claims_refuse_bad_times() -> None:
    with pytest.raises(InvalidJWTSVID, match="TTL must be positive"):
        jwt_svid_claims(SUB, [AUD], ISS, NOW, timedelta(0))
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        jwt_svid_claims(SUB, [AUD], ISS, NOW.replace(tzinfo=None), TTL)
    with pytest.raises(ValueError, match="not_after_cap must be timezone-aware"):
        jwt_svid_claims(SUB, [AUD], ISS, NOW, TTL, (NOW + TTL).replace(tzinfo=None))


# -- interoperability ----------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_pyjwt_decodes_our_tokens(alg: str) -> None:
    now = datetime.now(UTC)
    token = make(alg, now=now)
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": "k1", "typ": "JWT"}
    decoded = jwt.decode(
        token, key=PRIVATE[alg].public_key(), algorithms=[alg], audience=AUD, issuer=ISS
    )
    assert decoded["sub"] == SUB and decoded["aud"] == [AUD]
    assert decoded["exp"] - decoded["iat"] == 300
    assert validate(token, alg, now=now) == decoded


@pytest.mark.parametrize("alg", ALGS)
def test_pyjwt_and_we_read_the_same_josepy_jwks(alg: str) -> None:
    now = datetime.now(UTC)
    token = make(alg, kid="2026-11-k", now=now)
    jwks = josepy_jwks(alg, kid="2026-11-k")
    pyjwk = jwt.PyJWKSet.from_dict(jwks)["2026-11-k"]
    decoded = jwt.decode(token, key=pyjwk.key, algorithms=[alg], audience=AUD)
    ours = jwks_keys(jwks)
    assert list(ours) == ["2026-11-k"]
    assert ours["2026-11-k"].public_numbers() == PRIVATE[alg].public_key().public_numbers()
    assert validate_jwt_svid(token, AUD, ours, TD, now) == decoded


def test_pyjwt_agrees_a_tampered_token_is_forged() -> None:
    # Checks the tampering helper, so that the refusal below is about the signature.
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(_tampered_payload(), key=P256.public_key(), algorithms=["ES256"], audience=AUD)


# -- bundle keys -----------------------------------------------------------------


def test_jwks_keys_picks_jwt_svid_keys_with_a_kid() -> None:
    ec_jwk = josepy.JWKEC(key=P256.public_key()).to_json()
    rsa_jwk = josepy.JWKRSA(key=RSA2048.public_key()).to_json()
    jwks = {
        "spiffe_sequence": 3,
        "keys": [
            {**ec_jwk, "kid": "ec", "use": "jwt-svid"},
            {**rsa_jwk, "kid": "rsa", "use": "jwt-svid"},
            {**rsa_jwk, "kid": "x509", "use": "x509-svid", "x5c": []},
            {**ec_jwk, "use": "jwt-svid"},
            {**ec_jwk, "kid": "nouse"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64(bytes(32)), "kid": "ed", "use": "jwt-svid"},
            {"kty": "oct", "k": b64(b"secret"), "kid": "hmac", "use": "jwt-svid"},
            {"kty": "future", "kid": "new", "use": "jwt-svid"},
        ],
    }
    found = jwks_keys(jwks)
    assert sorted(found) == ["ec", "rsa"]
    assert isinstance(found["ec"], ec.EllipticCurvePublicKey)
    assert isinstance(found["rsa"], rsa.RSAPublicKey)
    assert list(jwks_keys(jwks, use="x509-svid")) == ["x509"]


@pytest.mark.parametrize(
    ("jwks", "reason"),
    [
        ({}, "no 'keys' list"),
        ({"keys": {"kid": "k1"}}, "no 'keys' list"),
        ({"keys": ["k1"]}, "JWK #0 is not a JSON object"),
        (
            {"keys": [{**josepy_jwks("ES256")["keys"][0]}, {**josepy_jwks("ES384")["keys"][0]}]},
            "two jwt-svid keys with kid 'k1'",
        ),
        ({"keys": [{**josepy_jwks("ES256")["keys"][0], "kid": 5}]}, "has kid 5"),
        (
            {"keys": [{**josepy.JWKEC(key=P256).to_json(), "kid": "k1", "use": "jwt-svid"}]},
            "holds private key material",
        ),
        (
            {
                "keys": [
                    {
                        "kty": "EC",
                        "crv": "P-256",
                        "x": "AAAA",
                        "y": "AAAA",
                        "kid": "k1",
                        "use": "jwt-svid",
                    }
                ]
            },
            "kid 'k1' is not a valid EC public key",
        ),
        ({"keys": [{"kty": "EC", "kid": "k1", "use": "jwt-svid"}]}, "not a valid EC public key"),
        (
            {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "k1", "use": "jwt-svid"}]},
            "not a valid RSA public key",
        ),
    ],
)
def test_jwks_keys_refuses_broken_bundles(jwks: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidJWTSVID, match=reason):
        jwks_keys(jwks)


# -- validating ------------------------------------------------------------------


def test_validate_returns_the_claims() -> None:
    claims = claims_at()
    token = encode_jwt_svid(software_signer(P256, "ES256"), "ES256", "k1", claims)
    assert validate(token) == claims


def test_aud_may_be_a_single_string_and_typ_may_be_jose_or_absent() -> None:
    assert validate(make(aud=AUD))["aud"] == AUD
    assert validate(make(aud=["other", AUD]))["aud"] == ["other", AUD]
    assert validate(forge({"alg": "ES256", "kid": "k1", "typ": "JOSE"}))["sub"] == SUB
    assert validate(forge({"alg": "ES256", "kid": "k1"}))["sub"] == SUB


def test_leeway_boundaries() -> None:
    token = make()
    exp = NOW + TTL
    assert validate(token, now=exp + timedelta(seconds=30))["sub"] == SUB
    with pytest.raises(InvalidJWTSVID, match="expired at"):
        validate(token, now=exp + timedelta(seconds=30, microseconds=1))
    with pytest.raises(InvalidJWTSVID, match="expired at"):
        validate(token, now=exp + timedelta(microseconds=1), leeway=timedelta(0))
    # Issued by a server whose clock is 30 s ahead: still fine, 31 s is not.
    assert validate(token, now=NOW - timedelta(seconds=30))["sub"] == SUB
    with pytest.raises(InvalidJWTSVID, match="issued in the future"):
        validate(token, now=NOW - timedelta(seconds=31))


def test_expired_message_names_the_times() -> None:
    with pytest.raises(InvalidJWTSVID) as caught:
        validate(make(), now=NOW + timedelta(hours=1))
    assert str(caught.value) == (
        "JWT-SVID expired at 2026-11-23T08:05:00Z (now 2026-11-23T09:00:00Z, leeway 30s)"
    )


def test_allowed_algs_narrow_the_choice() -> None:
    assert validate(make("ES384"), "ES384", allowed_algs=frozenset({"ES384"}))["sub"] == SUB
    with pytest.raises(InvalidJWTSVID, match=r"alg 'ES256' is not allowed; allowed: ES384$"):
        validate(make(), allowed_algs=frozenset({"ES384"}))
    with pytest.raises(ValueError, match="allowed_algs may hold only"):
        validate(make(), allowed_algs=frozenset({"ES256", "HS256"}))


def test_validate_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        validate(make(), now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="audience must be a non-empty string"):
        validate_jwt_svid(make(), "", keys(), TD, NOW)
    with pytest.raises(ValueError, match="leeway must not be negative"):
        validate(make(), leeway=timedelta(seconds=-1))


def _tampered_payload() -> str:
    header, payload, signature = make().split(".")
    claims = json.loads(unb64(payload))
    claims["sub"] = "spiffe://example.org/admin"
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def _tampered_signature() -> str:
    header, payload, signature = make().split(".")
    raw = bytearray(unb64(signature))
    raw[-1] ^= 1
    return f"{header}.{payload}.{b64(bytes(raw))}"


def _alg_none() -> str:
    header = b64(json.dumps({"alg": "none", "kid": "k1", "typ": "JWT"}).encode())
    return f"{header}.{make().split('.')[1]}."


def _hs256_with_public_key_as_secret() -> str:
    # The classic confusion: a verifier that lets the token pick HMAC would
    # use the (public) verification key bytes as the shared secret.
    secret = P256.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    signing_input = f"{header}.{make().split('.')[1]}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def with_raw_header(header: bytes) -> str:
    """A token whose header is ``header`` as given, with a good payload and signature."""
    signing_input = f"{b64(header)}.{make().split('.')[1]}"
    return f"{signing_input}.{b64(software_signer(P256, 'ES256')(signing_input.encode()))}"


HEADER = {"alg": "ES256", "kid": "k1", "typ": "JWT"}
NESTED = b'{"sub":' + b"[" * 5000 + b"]" * 5000 + b"}"

REFUSALS: list[tuple[str, Callable[[], str], str]] = [
    ("tampered payload", _tampered_payload, "signature does not verify with the ES256 key"),
    ("tampered signature", _tampered_signature, "signature does not verify"),
    (
        "signature of another key",
        lambda: forge(HEADER, key=ec.generate_private_key(ec.SECP256R1())),
        "signature does not verify",
    ),
    ("empty signature", lambda: make().rsplit(".", 1)[0] + ".", "signature does not verify"),
    (
        "expired",
        lambda: make(exp=int((NOW - timedelta(minutes=1)).timestamp())),
        r"expired at 2026-11-23T07:59:00Z \(now 2026-11-23T08:00:00Z, leeway 30s\)",
    ),
    (
        "iat in the future",
        lambda: make(iat=int((NOW + timedelta(minutes=2)).timestamp())),
        "issued in the future, at 2026-11-23T08:02:00Z",
    ),
    (
        "nbf in the future",
        lambda: make(nbf=int((NOW + timedelta(minutes=2)).timestamp())),
        "not valid before 2026-11-23T08:02:00Z",
    ),
    ("no exp", lambda: make(exp=DROP), "has no exp claim"),
    ("exp not a number", lambda: make(exp="2026-11-23"), "exp '2026-11-23' is not a number"),
    ("exp true", lambda: make(exp=True), "exp True is not a number"),
    ("exp NaN", lambda: forge(HEADER, raw=b'{"exp":NaN}'), "NaN is not a JSON value"),
    (
        "wrong audience",
        lambda: make(aud=["other"]),
        r"audience \['other'\] does not include 'spiffe://example.org/reports'",
    ),
    ("empty aud", lambda: make(aud=[]), "aud is empty"),
    ("empty aud string", lambda: make(aud=""), "aud is empty"),
    ("no aud", lambda: make(aud=DROP), "has no aud claim"),
    ("aud of numbers", lambda: make(aud=[1]), r"aud \[1\] is not a string or a list of strings"),
    ("alg none", _alg_none, "alg 'none' is not allowed .*; allowed: ES256, ES384, PS256, RS256"),
    (
        "HS256 with the public key as secret",
        _hs256_with_public_key_as_secret,
        r"alg 'HS256' is not allowed \(HMAC",
    ),
    ("no alg", lambda: forge({"kid": "k1"}), "header has no alg"),
    (
        "alg not a string",
        lambda: forge({"alg": ["ES256"], "kid": "k1"}),
        r"alg \['ES256'\] is not allowed",
    ),
    ("ES512", lambda: forge({**HEADER, "alg": "ES512"}), "alg 'ES512' is not allowed"),
    ("unknown kid", lambda: make(kid="other"), "kid 'other' is not in the trust bundle"),
    ("no kid", lambda: forge({"alg": "ES256"}), "header has no kid"),
    ("kid not a string", lambda: forge({**HEADER, "kid": 1}), "kid 1 is not a string"),
    (
        "crit header",
        lambda: forge({**HEADER, "b64": False, "crit": ["b64"]}),
        r"critical header parameters \['b64'\] that are not understood",
    ),
    ("empty crit", lambda: forge({**HEADER, "crit": []}), r"critical header parameters \[\]"),
    ("typ other", lambda: forge({**HEADER, "typ": "at+jwt"}), "typ 'at\\+jwt' is not allowed"),
    (
        "sub in another trust domain",
        lambda: make(sub="spiffe://evil.org/ns/prod/sa/web"),
        "sub 'spiffe://evil.org/ns/prod/sa/web' is not in trust domain 'example.org'",
    ),
    ("sub not a SPIFFE ID", lambda: make(sub="web"), "sub is not a SPIFFE ID: .*has no scheme"),
    (
        "sub with a bad path",
        lambda: make(sub="spiffe://example.org/a//b"),
        "sub is not a SPIFFE ID: .*empty segment",
    ),
    ("no sub", lambda: make(sub=DROP), "has no sub claim"),
    ("sub not a string", lambda: make(sub=["spiffe://example.org/web"]), "is not a string"),
    (
        "ES384 header, P-256 key",
        lambda: forge({**HEADER, "alg": "ES384"}, key=P256, alg="ES384"),
        "alg ES384 needs an EC P-384 key, but kid 'k1' is an EC P-256 key",
    ),
    (
        "RS256 header, EC key",
        lambda: forge({**HEADER, "alg": "RS256"}, key=RSA2048, alg="RS256"),
        "alg RS256 needs an RSA key of at least 2048 bits, but kid 'k1' is an EC P-256 key",
    ),
    ("two parts", lambda: "a.b", "has 2 dot-separated parts, not three"),
    ("four parts", lambda: make() + ".x", "has 4 dot-separated parts"),
    ("garbage", lambda: "!!.??.**", "header is not base64url: it has the character '!'"),
    (
        "padded signature",
        lambda: make() + "==",
        "signature is not base64url: it has the character '='",
    ),
    ("standard base64", lambda: "a+b/.x.y", "header is not base64url: it has the character '\\+'"),
    ("impossible length", lambda: "abcde." + make().split(".", 1)[1], "length 5 is impossible"),
    ("header not JSON", lambda: with_raw_header(b"alg"), "header is not valid JSON"),
    ("header not UTF-8", lambda: with_raw_header(b"{\xff}"), "header is not UTF-8"),
    ("header a list", lambda: with_raw_header(b"[1]"), "header is a JSON list, not an object"),
    (
        "payload a string",
        lambda: forge(HEADER, raw=b'"spiffe://example.org/web"'),
        "payload is a JSON str, not an object",
    ),
    (
        "duplicate alg",
        lambda: with_raw_header(b'{"alg":"ES256","kid":"k1","alg":"none"}'),
        "header has the member 'alg' twice",
    ),
    (
        "duplicate sub",
        lambda: forge(HEADER, raw=b'{"sub":"spiffe://example.org/a","sub":"x"}'),
        "payload has the member 'sub' twice",
    ),
    ("deep nesting", lambda: forge(HEADER, raw=NESTED), "nested too deeply"),
    ("huge token", lambda: "a" * 70_000 + ".b.c", "at most 65536 are accepted"),
]


@pytest.mark.parametrize(("name", "token", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name: str, token: Callable[[], str], reason: str) -> None:
    with pytest.raises(InvalidJWTSVID, match=reason):
        validate(token())


def test_checks_run_in_the_documented_order() -> None:
    # Each step fixes the problem reported before; every later problem stays.
    bad_claims = claims_at(
        exp=int((NOW - timedelta(hours=1)).timestamp()), aud=["other"], sub="spiffe://evil.org/x"
    )
    steps: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({"alg": "none", "kid": "?", "crit": [], "typ": "?"}, bad_claims, "alg 'none'"),
        ({"alg": "ES384", "kid": "?", "crit": [], "typ": "?"}, bad_claims, "kid '\\?'"),
        ({"alg": "ES384", "kid": "k1", "crit": [], "typ": "?"}, bad_claims, "critical"),
        ({"alg": "ES384", "kid": "k1", "typ": "?"}, bad_claims, "typ '\\?'"),
        ({"alg": "ES384", "kid": "k1"}, bad_claims, "needs an EC P-384 key"),
        ({"alg": "ES256", "kid": "k1"}, bad_claims, "signature does not verify"),
    ]
    for header, claims, reason in steps:
        with pytest.raises(InvalidJWTSVID, match=reason):
            validate(forge(header, claims, key=P384, alg="ES384"))
    signed: list[tuple[dict[str, Any], str]] = [
        (bad_claims, "expired at"),
        ({**bad_claims, "exp": claims_at()["exp"]}, "does not include"),
        ({**bad_claims, "exp": claims_at()["exp"], "aud": [AUD]}, "not in trust domain"),
    ]
    for claims, reason in signed:
        with pytest.raises(InvalidJWTSVID, match=reason):
            validate(forge(HEADER, claims))


def test_weak_rsa_key_is_refused_even_with_a_good_signature() -> None:
    token = forge({**HEADER, "alg": "RS256"}, key=RSA1024, alg="RS256")
    with pytest.raises(InvalidJWTSVID, match="at least 2048 bits, but kid 'k1' is a 1024-bit"):
        validate_jwt_svid(token, AUD, {"k1": RSA1024.public_key()}, TD, NOW)


def test_a_non_string_token_is_refused() -> None:
    with pytest.raises(InvalidJWTSVID, match="must be a str, not bytes"):
        validate(make().encode())  # type: ignore[arg-type]


def test_the_kid_chooses_among_several_keys() -> None:
    bundle = {"old": P384.public_key(), "new": P256.public_key()}
    token = make(kid="new")
    assert validate_jwt_svid(token, AUD, bundle, TD, NOW)["sub"] == SUB
    # The same signature presented under the other kid must not pass.
    header = b64(json.dumps({**HEADER, "kid": "old", "alg": "ES384"}).encode())
    moved = header + "." + token.split(".", 1)[1]
    with pytest.raises(InvalidJWTSVID, match="signature does not verify"):
        validate_jwt_svid(moved, AUD, bundle, TD, NOW)


SEGMENT = st.from_regex(r"[a-zA-Z0-9._-]{1,16}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)


@settings(max_examples=60, deadline=None)
@given(
    alg=st.sampled_from(ALGS),
    segments=st.lists(SEGMENT, min_size=0, max_size=5),
    audiences=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=4, unique=True),
    pick=st.integers(min_value=0),
)
def test_random_identities_round_trip(
    alg: str, segments: list[str], audiences: list[str], pick: int
) -> None:
    spiffe_id = "spiffe://example.org" + "".join("/" + segment for segment in segments)
    claims = jwt_svid_claims(spiffe_id, audiences, ISS, NOW, TTL)
    token = encode_jwt_svid(software_signer(PRIVATE[alg], alg), alg, "k1", claims)
    audience = audiences[pick % len(audiences)]
    assert validate_jwt_svid(token, audience, keys(alg), TD, NOW) == claims
    stranger = "".join(audiences) + "-not-listed"
    with pytest.raises(InvalidJWTSVID, match="does not include"):
        validate_jwt_svid(token, stranger, keys(alg), TD, NOW)
