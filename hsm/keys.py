"""HSM keys as cryptography private keys.

cryptography's X.509 builders (certificates, CSRs, CRLs, OCSP responses) sign
with any subclass of its private-key ABCs by calling ``sign()``; this is its
documented route for HSM and KMS keys. Each class here implements ``sign`` by
asking the token, and ``public_key`` from the public half read once at load.
Anything that would reveal the private key raises: the key never leaves the
token.

Token behaviour worth knowing: SoftHSM offers CKM_ECDSA but not
CKM_ECDSA_SHA256, so EC signing hashes here and sends the digest; the token
answers raw ``r||s`` (what JWS wants), which X.509 re-encodes as DER.
"""

from __future__ import annotations

import hashlib
from typing import Any, NoReturn, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import MGF, Mechanism

from idmint.hsm.errors import UnsupportedMechanism
from idmint.hsm.keytypes import KeyType, PublicKey, check_jws_algorithm

_RSA_PKCS = {
    "sha256": Mechanism.SHA256_RSA_PKCS,
    "sha384": Mechanism.SHA384_RSA_PKCS,
    "sha512": Mechanism.SHA512_RSA_PKCS,
}
_RSA_PSS = {
    "sha256": (Mechanism.SHA256_RSA_PKCS_PSS, Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384_RSA_PKCS_PSS, Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512_RSA_PKCS_PSS, Mechanism.SHA512, MGF.SHA512),
}
_JWS_HASH = {"ES256": "sha256", "ES384": "sha384", "RS256": "sha256", "PS256": "sha256"}


class TokenSigner(Protocol):
    """What a key needs of the store that holds it (:class:`idmint.hsm.KeyStore`).

    A protocol rather than an import, so the store can import the key classes
    and this module needs nothing of the store's.
    """

    token_label: str

    def sign(
        self, key_id: bytes, data: bytes, mechanism: Mechanism, mechanism_param: Any = None
    ) -> bytes: ...

    def uri_for_id(self, key_id: bytes) -> str: ...


class HSMPrivateKey:
    """What every HSM-backed key has besides its cryptography interface."""

    store: TokenSigner
    key_id: bytes
    key_type: KeyType

    def _bind(self, store: TokenSigner, key_id: bytes, key_type: KeyType, public: Any) -> None:
        self.store = store
        self.key_id = key_id
        self.key_type = key_type
        self._public = public

    @property
    def uri(self) -> str:
        """RFC 7512 URI of this key (token and CKA_ID)."""
        return self.store.uri_for_id(self.key_id)

    def sign_jws(self, alg: str, signing_input: bytes) -> bytes:
        """The JWS signature (RFC 7518) of ``signing_input``: raw r||s for ES*."""
        check_jws_algorithm(self.key_type, alg)
        if alg == "EdDSA":
            return self.store.sign(self.key_id, signing_input, Mechanism.EDDSA)
        digest_name = _JWS_HASH[alg]
        if alg.startswith("ES"):
            digest = hashlib.new(digest_name, signing_input).digest()
            return self.store.sign(self.key_id, digest, Mechanism.ECDSA)
        if alg.startswith("RS"):
            return self.store.sign(self.key_id, signing_input, _RSA_PKCS[digest_name])
        mechanism, hash_mechanism, mgf = _RSA_PSS[digest_name]
        # RFC 7518 section 3.5: the salt is as long as the hash output.
        salt = hashlib.new(digest_name).digest_size
        return self.store.sign(self.key_id, signing_input, mechanism, (hash_mechanism, mgf, salt))

    def _refuse_export(self) -> NoReturn:
        raise UnsupportedMechanism(
            "the private key is not extractable from the HSM",
            token=self.store.token_label,
            key=self.key_id.hex(),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key_type.value} id={self.key_id.hex()}>"


class HSMEllipticCurvePrivateKey(HSMPrivateKey, ec.EllipticCurvePrivateKey):
    """An EC private key (P-256, P-384) held by the token."""

    _public: ec.EllipticCurvePublicKey

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedMechanism(f"EC keys sign with ECDSA, not {signature_algorithm!r}")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)
        else:
            digest = hashlib.new(algorithm.name, data).digest()
        raw = self.store.sign(self.key_id, digest, Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise UnsupportedMechanism("idmint's HSM keys only sign; ECDH is not offered")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._refuse_export()

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        self._refuse_export()

    def __copy__(self) -> HSMEllipticCurvePrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HSMEllipticCurvePrivateKey:
        return self


class HSMRSAPrivateKey(HSMPrivateKey, rsa.RSAPrivateKey):
    """An RSA private key held by the token (PKCS#1 v1.5 and PSS signatures)."""

    _public: rsa.RSAPublicKey

    def sign(
        self,
        data: Any,
        padding: padding.AsymmetricPadding,
        algorithm: Any,
    ) -> bytes:
        if isinstance(algorithm, Prehashed):
            raise UnsupportedMechanism("HSM RSA keys sign whole messages, not prehashed digests")
        if not isinstance(algorithm, hashes.HashAlgorithm) or algorithm.name not in _RSA_PKCS:
            raise UnsupportedMechanism(f"RSA signing with {algorithm!r} is not supported")
        name = algorithm.name
        if isinstance(padding, _padding.PKCS1v15):
            return self.store.sign(self.key_id, bytes(data), _RSA_PKCS[name])
        if isinstance(padding, _padding.PSS):
            mechanism, hash_mechanism, mgf = _RSA_PSS[name]
            salt = _pss_salt_length(padding, self.key_size, algorithm)
            return self.store.sign(self.key_id, bytes(data), mechanism, (hash_mechanism, mgf, salt))
        raise UnsupportedMechanism(f"RSA padding {padding.name} is not supported")

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        raise UnsupportedMechanism("idmint's HSM keys only sign; decryption is not offered")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        self._refuse_export()

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        self._refuse_export()

    def __copy__(self) -> HSMRSAPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HSMRSAPrivateKey:
        return self


class HSMEd25519PrivateKey(HSMPrivateKey, ed25519.Ed25519PrivateKey):
    """An Ed25519 private key held by the token (CKM_EDDSA)."""

    _public: ed25519.Ed25519PublicKey

    def sign(self, data: Any) -> bytes:
        return self.store.sign(self.key_id, bytes(data), Mechanism.EDDSA)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        self._refuse_export()

    def private_bytes_raw(self) -> bytes:
        self._refuse_export()

    def __copy__(self) -> HSMEd25519PrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HSMEd25519PrivateKey:
        return self


_padding = padding


def _pss_salt_length(pss: padding.PSS, key_size: int, algorithm: hashes.HashAlgorithm) -> int:
    # cryptography keeps the requested salt length private; MAX_LENGTH and
    # DIGEST_LENGTH are sentinels we resolve as its own backend does.
    requested = getattr(pss, "_salt_length", None)
    if isinstance(requested, int):
        return requested
    if isinstance(requested, padding._MaxLength):
        return (key_size + 7) // 8 - algorithm.digest_size - 2
    return algorithm.digest_size


AnyHSMKey = HSMEllipticCurvePrivateKey | HSMRSAPrivateKey | HSMEd25519PrivateKey

_CLASSES: dict[str, type[AnyHSMKey]] = {
    "ec": HSMEllipticCurvePrivateKey,
    "rsa": HSMRSAPrivateKey,
    "ed25519": HSMEd25519PrivateKey,
}


def make_private_key(
    store: TokenSigner, key_id: bytes, key_type: KeyType, public: PublicKey
) -> AnyHSMKey:
    """Wrap key ``key_id`` of ``store`` in the cryptography class of its type."""
    cls = _CLASSES[key_type.family]
    key = cls.__new__(cls)
    key._bind(store, key_id, key_type, public)
    return key
