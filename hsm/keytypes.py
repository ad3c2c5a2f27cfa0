"""Key types idmint generates, and the signature algorithms each can serve."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11.util.ec import encode_named_curve_parameters

from idmint.hsm.errors import UnsupportedMechanism

# DER of OID 1.3.101.112 (id-Ed25519, RFC 8410), SoftHSM's CKA_EC_PARAMS for
# Ed25519; asn1crypto's named-curve table does not know it.
#: The public half of any key type here, as cryptography loads it.
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_ED25519_PARAMS = bytes.fromhex("06032b6570")


class KeyType(enum.Enum):
    """A key type as written in configuration and on the command line."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ED25519 = "ed25519"

    @classmethod
    def parse(cls, text: str) -> KeyType:
        """``ec-p256`` -> :attr:`EC_P256`; raise naming the accepted values."""
        try:
            return cls(text.lower())
        except ValueError:
            accepted = ", ".join(k.value for k in cls)
            raise UnsupportedMechanism(
                f"unknown key type {text!r}; use one of {accepted}"
            ) from None

    @property
    def family(self) -> str:
        """``ec``, ``rsa`` or ``ed25519``."""
        return self.value.split("-")[0]

    @property
    def size(self) -> int:
        """Curve size or modulus length in bits."""
        return KEY_SPECS[self].size


@dataclass(frozen=True)
class KeySpec:
    """What PKCS#11 needs to generate a key of a type."""

    size: int
    curve: str | None = None  # named curve of EC keys


KEY_SPECS: dict[KeyType, KeySpec] = {
    KeyType.EC_P256: KeySpec(256, "secp256r1"),
    KeyType.EC_P384: KeySpec(384, "secp384r1"),
    KeyType.RSA_2048: KeySpec(2048),
    KeyType.RSA_3072: KeySpec(3072),
    KeyType.RSA_4096: KeySpec(4096),
    KeyType.ED25519: KeySpec(256),
}

#: JWS algorithms (RFC 7518) each key family may sign with.
JWS_ALGORITHMS: dict[str, frozenset[str]] = {
    "ec": frozenset({"ES256", "ES384"}),
    "rsa": frozenset({"RS256", "PS256"}),
    "ed25519": frozenset({"EdDSA"}),
}


@functools.cache  # checked before every JWT signature; refusals are not cached
def check_jws_algorithm(key_type: KeyType, alg: str) -> None:
    """Raise unless ``alg`` suits ``key_type`` (ES256 needs P-256, ES384 P-384)."""
    allowed = JWS_ALGORITHMS[key_type.family]
    if alg not in allowed:
        raise UnsupportedMechanism(
            f"JWS algorithm {alg!r} cannot be used with a {key_type.value} key; "
            f"use one of {sorted(allowed)}"
        )
    if (alg, key_type) in {("ES256", KeyType.EC_P384), ("ES384", KeyType.EC_P256)}:
        raise UnsupportedMechanism(
            f"JWS algorithm {alg} needs curve P-{alg[2:]}, the key is {key_type.value} "
            "(RFC 7518 section 3.4)"
        )


def ec_params(key_type: KeyType) -> bytes:
    """DER CKA_EC_PARAMS for an EC or Ed25519 key type."""
    if key_type is KeyType.ED25519:
        return _ED25519_PARAMS
    curve = KEY_SPECS[key_type].curve
    if curve is None:
        raise UnsupportedMechanism(f"{key_type.value} keys have no curve")
    return encode_named_curve_parameters(curve)
