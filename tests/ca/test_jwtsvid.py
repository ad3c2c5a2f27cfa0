"""JWT-SVIDs: made by us, read by PyJWT; and our validator's refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import josepy
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.jwtsvid import (
    InvalidJWTSVID,
    encode_jwt_svid,
    jwks_keys,
    jwt_svid_claims,
    validate_jwt_svid,
)
from ca.spiffe_id import TrustDomain

TD = TrustDomain("example.org")
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
RSA = rsa.generate_private_key(65537, 2048)
KEYS: dict[str, Any] = {"ES256": P256, "ES384": P384, "RS256": RSA, "PS256": RSA}


def signer(private: Any, alg: str) -> Any:
    def sign(data: bytes) -> bytes:
        if alg.startswith("ES"):
            digest = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
            r, s = decode_dss_signature(private.sign(data, ec.ECDSA(digest)))
            size = (private.curve.key_size + 7) // 8
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if alg == "RS256":
            return bytes(private.sign(data, padding.PKCS1v15(), hashes.SHA256()))
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return bytes(private.sign(data, pss, hashes.SHA256()))

    return sign


def make(alg: str = "ES256", kid: str = "k1", **overrides: Any) -> str:
    claims = jwt_svid_claims(
        "spiffe://example.org/web", ["api"], "https://idmint.test", NOW, timedelta(minutes=5)
    )
    claims.update(overrides)
    return encode_jwt_svid(signer(KEYS[alg], alg), alg, kid, claims)


def keys_for(alg: str) -> dict[str, Any]:
    return {"k1": KEYS[alg].public_key()}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_round_trip_in_pyjwt_and_ours(alg: str) -> None:
    token = make(alg)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(
        token,
        KEYS[alg].public_key(),
        algorithms=[alg],
        audience="api",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == "spiffe://example.org/web" and claims["aud"] == ["api"]
    assert claims["exp"] - claims["iat"] == 300 and claims["iss"] == "https://idmint.test"
    assert validate_jwt_svid(token, "api", keys_for(alg), TD, NOW)["jti"] == claims["jti"]


def test_pyjwt_reads_our_jwks() -> None:
    jwk = dict(josepy.JWKEC(key=P256.public_key()).to_partial_json())
    jwks = {"keys": [{**jwk, "kid": "k1", "use": "jwt-svid"}]}
    assert set(jwks_keys(jwks)) == {"k1"}
    key_set = jwt.PyJWKSet.from_dict({"keys": [{**jwk, "kid": "k1"}]})
    decoded = jwt.decode(
        make(),
        key_set["k1"].key,
        algorithms=["ES256"],
        audience="api",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded["sub"] == "spiffe://example.org/web"


def test_exp_is_capped() -> None:
    cap = NOW + timedelta(minutes=1)
    claims = jwt_svid_claims("spiffe://example.org/w", ["a"], "i", NOW, timedelta(minutes=5), cap)
    assert claims["exp"] == int(cap.timestamp())
    with pytest.raises(InvalidJWTSVID, match="at least one non-empty audience"):
        jwt_svid_claims("spiffe://example.org/w", [], "i", NOW, timedelta(minutes=5))


def _tamper_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "spiffe://example.org/admin"
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def _tamper_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 1
    return f"{header}.{payload}.{b64(bytes(raw))}"


def _alg_none() -> str:
    header = b64(json.dumps({"alg": "none", "kid": "k1", "typ": "JWT"}).encode())
    return f"{header}.{make().split('.')[1]}."


def _hs256_confusion() -> str:
    from cryptography.hazmat.primitives import serialization

    secret = P256.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    payload = make().split(".")[1]
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(mac)}"


def _with_header(**header: Any) -> str:
    fields = {"alg": "ES256", "kid": "k1", "typ": "JWT", **header}
    encoded = b64(json.dumps(fields).encode())
    payload = make().split(".")[1]
    signature = signer(P256, "ES256")(f"{encoded}.{payload}".encode())
    return f"{encoded}.{payload}.{b64(signature)}"


REFUSALS = [
    ("tampered payload", lambda: _tamper_payload(make()), "signature does not verify"),
    ("tampered signature", lambda: _tamper_signature(make()), "signature does not verify"),
    ("expired", lambda: make(exp=int((NOW - timedelta(minutes=5)).timestamp())), "expired at"),
    (
        "iat in future",
        lambda: make(iat=int((NOW + timedelta(hours=1)).timestamp())),
        "iat is in the future",
    ),
    ("wrong audience", lambda: make(aud=["other"]), "does not include 'api'"),
    ("empty audience", lambda: make(aud=[]), "has no audience"),
    ("alg none", _alg_none, "alg 'none' is not allowed"),
    ("HS256 confusion", _hs256_confusion, "alg 'HS256' is not allowed"),
    ("unknown kid", lambda: make(kid="other"), "kid 'other' is not in the trust bundle"),
    ("crit header", lambda: _with_header(crit=["b64"]), "critical header parameters"),
    ("other trust domain", lambda: make(sub="spiffe://other.org/web"), "not in trust domain"),
    ("sub not a SPIFFE ID", lambda: make(sub="web"), "sub is not a SPIFFE ID"),
    ("ES384 header, P-256 key", lambda: _with_header(alg="ES384"), "does not fit the key"),
    ("two parts", lambda: "a.b", "three dot-separated parts"),
    ("garbage", lambda: "!!.??.**", "not base64url|not JSON"),
]


@pytest.mark.parametrize(("name", "token", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name: str, token: Any, reason: str) -> None:
    with pytest.raises(InvalidJWTSVID, match=reason):
        validate_jwt_svid(token(), "api", keys_for("ES256"), TD, NOW)


@settings(max_examples=40, deadline=None)
@given(
    path=st.lists(
        st.from_regex(r"[a-zA-Z0-9._-]{1,12}", fullmatch=True).filter(
            lambda s: s not in (".", "..")
        ),
        min_size=1,
        max_size=4,
    ),
    audiences=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3),
)
def test_round_trip_property(path: list[str], audiences: list[str]) -> None:
    spiffe_id = "spiffe://example.org/" + "/".join(path)
    claims = jwt_svid_claims(spiffe_id, audiences, "iss", NOW, timedelta(minutes=1))
    token = encode_jwt_svid(signer(P256, "ES256"), "ES256", "k1", claims)
    decoded = validate_jwt_svid(token, audiences[-1], keys_for("ES256"), TD, NOW)
    assert decoded["sub"] == spiffe_id and decoded["aud"] == audiences
