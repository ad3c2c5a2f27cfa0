"""The PKCS#11 key store: generate, find, list, destroy and sign.

Every key is created with CKA_TOKEN, CKA_PRIVATE and CKA_SENSITIVE true and
CKA_EXTRACTABLE false, a random 16-byte CKA_ID and a label. Keys are handed
out as subclasses of cryptography's private-key ABCs (:mod:`hsm.keys`), so
certificate, CSR, CRL and OCSP builders sign with them directly.

A signing call borrows a pooled session, finds (or reuses) the key handle and
signs. If the token lost the session or our login, the pool is reset and the
call retried once; what still fails becomes an :class:`HSMError` naming token,
key and mechanism.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_ec_public_key

from idmint.hsm import module as modules
from idmint.hsm.config import HSMConfig, Pin, read_pin, resolve_module
from idmint.hsm.errors import (
    HSMError,
    KeyExists,
    KeyNotFound,
    SessionLost,
    SigningFailed,
    TokenNotFound,
    UnsupportedMechanism,
)
from idmint.hsm.keys import AnyHSMKey, make_private_key
from idmint.hsm.keytypes import KEY_SPECS, KeyType, PublicKey, ec_params
from idmint.hsm.pool import SESSION_LOST_ERRORS, PooledSession, SessionPool
from idmint.hsm.uri import PKCS11URI

_GENERATE_MECHANISM = {
    "ec": Mechanism.EC_KEY_PAIR_GEN,
    "rsa": Mechanism.RSA_PKCS_KEY_PAIR_GEN,
    "ed25519": Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
}
_SIGN_MECHANISMS = {
    "ec": frozenset({"ECDSA", "ECDSA_SHA256", "ECDSA_SHA384", "ECDSA_SHA512"}),
    "rsa": frozenset(
        {"RSA_PKCS", "RSA_PKCS_PSS"}
        | {f"SHA{n}_RSA_PKCS" for n in (256, 384, 512)}
        | {f"SHA{n}_RSA_PKCS_PSS" for n in (256, 384, 512)}
    ),
    "ed25519": frozenset({"EDDSA"}),
}
_SECURITY_ATTRIBUTES = (
    Attribute.TOKEN,
    Attribute.PRIVATE,
    Attribute.SENSITIVE,
    Attribute.EXTRACTABLE,
    Attribute.ALWAYS_SENSITIVE,
    Attribute.NEVER_EXTRACTABLE,
)


@dataclass(frozen=True)
class KeyInfo:
    """A key on the token and the security attributes read back from it."""

    label: str
    key_id: bytes
    key_type: KeyType
    uri: str
    token: bool
    private: bool
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool


class KeyStore:
    """Keys on one PKCS#11 token, shared safely by many threads."""

    def __init__(self, config: HSMConfig, pin: Pin | None = None) -> None:
        self.config = config
        self.module_path = resolve_module(config.module)
        self._module = modules.acquire(self.module_path, config.env)
        try:
            self._token = self._find_token(config.token_selector())
            self.token_label: str = self._token.label
            self._pool = SessionPool(
                self._module,
                self._token,
                pin if pin is not None else read_pin(config.pin_file),
                config.max_sessions,
            )
        except BaseException:
            modules.release(self._module)
            raise
        self._public_keys: dict[bytes, tuple[KeyType, PublicKey]] = {}
        self._admin_lock = threading.Lock()
        self._closed = False
        #: Called with the seconds each signature took (metrics); None: not timed.
        self.sign_observer: Callable[[float], None] | None = None

    # -- lifecycle -------------------------------------------------------

    def close(self) -> None:
        """Close every session; the object is unusable afterwards."""
        if not self._closed:
            self._closed = True
            self._pool.close()
            modules.release(self._module)

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def max_sessions(self) -> int:
        return self._pool.max_sessions

    @property
    def slot_id(self) -> int:
        return int(self._token.slot.slot_id)

    def _find_token(self, selector: PKCS11URI) -> Any:
        wanted = {
            "label": selector.token,
            "manufacturer_id": selector.manufacturer,
            "serial": selector.serial,
            "model": selector.model,
        }
        described = str(selector)
        for slot in self._module.lib.get_slots(token_present=True):
            if selector.slot_id is not None and slot.slot_id != selector.slot_id:
                continue
            try:
                token = slot.get_token()
            except p11.PKCS11Error:
                continue
            if all(
                value is None or _token_field(token, name) == value
                for name, value in wanted.items()
            ):
                return token
        raise TokenNotFound(
            f"no token matches {described} in module {self.module_path}; "
            "check the label (softhsm2-util --show-slots) and SOFTHSM2_CONF"
        )

    # -- sessions with one retry ------------------------------------------

    def _run(self, what: str, key: str | None, operation: Any) -> Any:
        """Run ``operation(session)`` on a pooled session, healing once."""
        for attempt in (1, 2):
            pooled = self._pool.acquire()
            try:
                result = operation(pooled)
            except SESSION_LOST_ERRORS as exc:
                self._pool.discard(pooled)
                if attempt == 2:
                    raise SessionLost(
                        f"{what} failed after re-opening the session: {type(exc).__name__}",
                        token=self.token_label,
                        key=key,
                    ) from None
                continue
            except BaseException:
                self._pool.release(pooled)
                raise
            self._pool.release(pooled)
            return result
        raise AssertionError("unreachable")

    # -- signing -----------------------------------------------------------

    def sign(
        self,
        key_id: bytes,
        data: bytes,
        mechanism: Mechanism,
        mechanism_param: Any = None,
    ) -> bytes:
        """Sign ``data`` with the private key ``key_id`` using ``mechanism``.

        For CKM_ECDSA, ``data`` is the digest and the result is raw ``r||s``
        (PKCS#11 v2.40 section 2.3.1), not DER.
        """
        for attempt in (1, 2):
            try:
                return self._sign_once(key_id, data, mechanism, mechanism_param)
            except SESSION_LOST_ERRORS as exc:
                if attempt == 2:
                    raise SessionLost(
                        f"signing failed after re-opening the session: {type(exc).__name__}",
                        **self._sign_context(key_id, mechanism),
                    ) from None
            except (p11.MechanismInvalid, p11.MechanismParamInvalid, p11.KeyTypeInconsistent):
                raise UnsupportedMechanism(
                    "the token does not support this mechanism for this key",
                    **self._sign_context(key_id, mechanism),
                ) from None
            except p11.PKCS11Error as exc:
                # Tokens differ in how they refuse a mechanism (SoftHSM says
                # CKR_GENERAL_ERROR for ECDSA with an RSA key), so explain it here.
                context = self._sign_context(key_id, mechanism)
                self._explain_refusal(key_id, mechanism, context)
                raise SigningFailed(f"signing failed: {type(exc).__name__}", **context) from None
        raise AssertionError("unreachable")

    def _sign_context(self, key_id: bytes, mechanism: Mechanism) -> dict[str, str]:
        # Built only for an error: every signature went through here.
        return {"token": self.token_label, "key": key_id.hex(), "mechanism": mechanism.name}

    def _explain_refusal(
        self, key_id: bytes, mechanism: Mechanism, context: dict[str, str]
    ) -> None:
        key_type = self._public_key(key_id)[0]
        if mechanism.name not in _SIGN_MECHANISMS[key_type.family]:
            raise UnsupportedMechanism(
                f"a {key_type.value} key cannot sign with {mechanism.name}", **context
            )
        if mechanism not in self.mechanisms():
            raise UnsupportedMechanism("the token does not offer this mechanism", **context)

    def _sign_once(
        self, key_id: bytes, data: bytes, mechanism: Mechanism, mechanism_param: Any
    ) -> bytes:
        # The hot path: no closures, no retries, one borrowed session.
        pool = self._pool
        pooled = pool.acquire()
        try:
            key = pooled.keys.get(key_id)
            if key is None:
                key = self._key_on(pooled, key_id)
            observer = self.sign_observer
            began = time.perf_counter() if observer is not None else 0.0
            result: bytes = key.sign(data, mechanism=mechanism, mechanism_param=mechanism_param)
            if observer is not None:
                observer(time.perf_counter() - began)
        except SESSION_LOST_ERRORS:
            pool.discard(pooled)
            raise
        except BaseException:
            pool.release(pooled)
            raise
        pool.release(pooled)
        return result

    def _key_on(self, pooled: PooledSession, key_id: bytes) -> Any:
        key = pooled.keys.get(key_id)
        if key is None:
            for attempt in (1, 2):
                try:
                    key = _find_one(pooled.session, ObjectClass.PRIVATE_KEY, key_id)
                    break
                except p11.NoSuchKey:
                    if attempt == 2:
                        raise KeyNotFound(
                            f"no private key with CKA_ID {key_id.hex()}", token=self.token_label
                        ) from None
                    self._pool.ensure_login(pooled)
            pooled.keys[key_id] = key
        return key

    # -- key management ----------------------------------------------------

    def generate(self, key_type: KeyType, label: str) -> AnyHSMKey:
        """Generate a non-extractable key pair on the token and return its private key."""
        if not label:
            raise ValueError("a key needs a non-empty label")
        family = key_type.family
        spec = KEY_SPECS[key_type]
        key_id = os.urandom(16)
        common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id}
        private_template = {
            **common,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        }
        public_template = {**common, Attribute.PRIVATE: False, Attribute.VERIFY: True}

        def generate(pooled: PooledSession) -> None:
            session = pooled.session
            if family == "rsa":
                session.generate_keypair(
                    P11KeyType.RSA,
                    spec.size,
                    store=True,
                    label=label,
                    id=key_id,
                    public_template=public_template,
                    private_template=private_template,
                    mechanism=_GENERATE_MECHANISM[family],
                )
                return
            parameters = session.create_domain_parameters(
                P11KeyType.EC if family == "ec" else P11KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: ec_params(key_type)},
                local=True,
            )
            parameters.generate_keypair(
                store=True,
                label=label,
                id=key_id,
                public_template=public_template,
                private_template=private_template,
                mechanism=_GENERATE_MECHANISM[family],
            )

        with self._admin_lock:
            if any(info.label == label for info in self.list_keys()):
                raise KeyExists(f"a key labelled {label!r} already exists", token=self.token_label)
            try:
                self._run("key generation", label, generate)
            except (p11.MechanismInvalid, p11.FunctionNotSupported, p11.DomainParamsInvalid):
                raise UnsupportedMechanism(
                    f"the token cannot generate {key_type.value} keys",
                    token=self.token_label,
                    key=label,
                    mechanism=_GENERATE_MECHANISM[family].name,
                ) from None
            except p11.PKCS11Error as exc:
                raise HSMError(
                    f"key generation failed: {type(exc).__name__}",
                    token=self.token_label,
                    key=label,
                    mechanism=_GENERATE_MECHANISM[family].name,
                ) from None
        return self.get(key_id=key_id)

    def _locate(self, label: str | None, key_id: bytes | None, uri: str | None) -> bytes:
        if uri is not None:
            parsed = PKCS11URI.parse(uri)
            if parsed.token is not None and parsed.token != self.token_label:
                raise KeyNotFound(
                    f"URI {uri} names token {parsed.token!r}, not this store's token",
                    token=self.token_label,
                )
            label, key_id = parsed.object, parsed.id
        if label is None and key_id is None:
            raise KeyNotFound("a key needs a label, an id or a PKCS#11 URI")
        if key_id is not None and (key_id in self._public_keys and label is None):
            return key_id

        def find(pooled: PooledSession) -> list[bytes]:
            attrs: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
            if label is not None:
                attrs[Attribute.LABEL] = label
            if key_id is not None:
                attrs[Attribute.ID] = key_id
            found = [obj[Attribute.ID] for obj in pooled.session.get_objects(attrs)]
            if not found:
                self._pool.ensure_login(pooled)
                found = [obj[Attribute.ID] for obj in pooled.session.get_objects(attrs)]
            return found

        found = self._run("key lookup", label, find)
        described = label if label is not None else (key_id or b"").hex()
        if not found:
            raise KeyNotFound(f"no private key {described!r} on the token", token=self.token_label)
        if len(found) > 1:
            raise KeyNotFound(
                f"{len(found)} private keys match {described!r}; address the key by id or URI",
                token=self.token_label,
            )
        return bytes(found[0])

    def get(
        self, label: str | None = None, *, key_id: bytes | None = None, uri: str | None = None
    ) -> AnyHSMKey:
        """The private key by label, CKA_ID or RFC 7512 URI, as a cryptography key."""
        found_id = self._locate(label, key_id, uri)
        key_type, public_key = self._public_key(found_id)
        return make_private_key(self, found_id, key_type, public_key)

    def _public_key(self, key_id: bytes) -> tuple[KeyType, PublicKey]:
        cached = self._public_keys.get(key_id)
        if cached is not None:
            return cached

        def read(pooled: PooledSession) -> tuple[KeyType, PublicKey]:
            try:
                public = _find_one(pooled.session, ObjectClass.PUBLIC_KEY, key_id)
            except p11.NoSuchKey:
                raise KeyNotFound(
                    f"the public half of key {key_id.hex()} is missing", token=self.token_label
                ) from None
            return _to_cryptography(public)

        result: tuple[KeyType, PublicKey] = self._run("public key read", key_id.hex(), read)
        self._public_keys[key_id] = result
        return result

    def list_keys(self) -> list[KeyInfo]:
        """Every private key on the token, with its security attributes."""

        def read(pooled: PooledSession) -> list[KeyInfo]:
            infos = []
            for obj in pooled.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                values = {attr: obj[attr] for attr in _SECURITY_ATTRIBUTES}
                label = str(obj[Attribute.LABEL])
                key_id = bytes(obj[Attribute.ID])
                try:
                    key_type = _key_type_of(obj)
                except UnsupportedMechanism:
                    continue  # a key we did not make and cannot use
                infos.append(
                    KeyInfo(
                        label=label,
                        key_id=key_id,
                        key_type=key_type,
                        uri=self.uri_for(label, key_id),
                        token=bool(values[Attribute.TOKEN]),
                        private=bool(values[Attribute.PRIVATE]),
                        sensitive=bool(values[Attribute.SENSITIVE]),
                        extractable=bool(values[Attribute.EXTRACTABLE]),
                        always_sensitive=bool(values[Attribute.ALWAYS_SENSITIVE]),
                        never_extractable=bool(values[Attribute.NEVER_EXTRACTABLE]),
                    )
                )
            return sorted(infos, key=lambda info: info.label)

        result: list[KeyInfo] = self._run("key listing", None, read)
        return result

    def destroy(self, key_id: bytes) -> None:
        """Destroy both halves of key ``key_id`` on the token."""

        def destroy(pooled: PooledSession) -> int:
            count = 0
            for obj in list(pooled.session.get_objects({Attribute.ID: key_id})):
                obj.destroy()
                count += 1
            return count

        with self._admin_lock:
            if not self._run("key destruction", key_id.hex(), destroy):
                raise KeyNotFound(f"no key with CKA_ID {key_id.hex()}", token=self.token_label)
            self._public_keys.pop(key_id, None)
            # Cached handles in other pooled sessions now point at nothing.
            for pooled in self._pool.idle_sessions():
                pooled.keys.pop(key_id, None)

    def mechanisms(self) -> set[Mechanism]:
        """The mechanisms the token advertises."""
        return set(self._token.slot.get_mechanisms())

    def uri_for(self, label: str, key_id: bytes) -> str:
        """The RFC 7512 URI of a private key on this token."""
        return str(PKCS11URI(token=self.token_label, object=label, id=key_id, type="private"))

    def uri_for_id(self, key_id: bytes) -> str:
        """The RFC 7512 URI of a private key by CKA_ID alone."""
        return str(PKCS11URI(token=self.token_label, id=key_id, type="private"))

    def iter_pool(self) -> Iterator[PooledSession]:
        """The idle sessions of the pool (tests use this to break them)."""
        return iter(self._pool.idle_sessions())


def open_keystore(config: HSMConfig, pin: Pin | None = None) -> KeyStore:
    """Open the token ``config`` names; the PIN comes from env or PIN file."""
    return KeyStore(config, pin)


def _find_one(session: Any, object_class: ObjectClass, key_id: bytes) -> Any:
    # Not Session.get_key: it stops its search iterator half way, leaving a
    # C_FindObjects operation whose finaliser later fails on a dead session.
    found = list(session.get_objects({Attribute.CLASS: object_class, Attribute.ID: key_id}))
    if not found:
        raise p11.NoSuchKey(f"no object with CKA_ID {key_id.hex()}")
    if len(found) > 1:
        raise KeyNotFound(f"{len(found)} objects share CKA_ID {key_id.hex()}")
    return found[0]


def _token_field(token: Any, name: str) -> str:
    return str(getattr(token, name, "")).strip()


def _key_type_of(obj: Any) -> KeyType:
    p11_type = obj[Attribute.KEY_TYPE]
    if p11_type == P11KeyType.RSA:
        bits = int.from_bytes(bytes(obj[Attribute.MODULUS]), "big").bit_length()
        return KeyType.parse(f"rsa-{bits}")
    if p11_type == P11KeyType.EC:
        params = bytes(obj[Attribute.EC_PARAMS])
        for key_type in (KeyType.EC_P256, KeyType.EC_P384):
            if params == ec_params(key_type):
                return key_type
    if p11_type == P11KeyType.EC_EDWARDS:
        return KeyType.ED25519
    raise UnsupportedMechanism(f"key type {p11_type} is not one idmint uses")


def _to_cryptography(public: Any) -> tuple[KeyType, PublicKey]:
    key_type = _key_type_of(public)
    if key_type.family == "rsa":
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(bytes(public[Attribute.PUBLIC_EXPONENT]), "big"),
            int.from_bytes(bytes(public[Attribute.MODULUS]), "big"),
        )
        return key_type, numbers.public_key()
    if key_type.family == "ec":
        loaded = load_der_public_key(encode_ec_public_key(public))
        assert isinstance(loaded, ec.EllipticCurvePublicKey)
        return key_type, loaded
    # CKA_EC_POINT of an Edwards key: DER OCTET STRING around the 32 raw bytes.
    point = bytes(public[Attribute.EC_POINT])
    raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
    return key_type, ed25519.Ed25519PublicKey.from_public_bytes(raw)


__all__ = ["KeyInfo", "KeyStore", "open_keystore", "pkcs11"]
