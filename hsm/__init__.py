"""PKCS#11 key store: CA private keys that never leave the token.

Depends on nothing else of idmint's but the root of the error tree.

The key store and keys (python-pkcs11, cryptography) are imported when
first named: a process that only reads the configuration (the database
writer and its standby, ``idmint.ca.config``) skips 11.7 MiB of them.
"""

from typing import TYPE_CHECKING, Any

from idmint.hsm.config import HSMConfig, Pin, read_pin
from idmint.hsm.errors import (
    HSMError,
    KeyExists,
    KeyNotFound,
    ModuleNotFound,
    PinError,
    SessionLost,
    SigningFailed,
    TokenNotFound,
    UnsupportedMechanism,
)

if TYPE_CHECKING:
    from idmint.hsm.keys import (
        HSMEd25519PrivateKey,
        HSMEllipticCurvePrivateKey,
        HSMPrivateKey,
        HSMRSAPrivateKey,
    )
    from idmint.hsm.keystore import KeyInfo, KeyStore, open_keystore
    from idmint.hsm.keytypes import KeyType

_LATER = {
    "HSMEd25519PrivateKey": "keys",
    "HSMEllipticCurvePrivateKey": "keys",
    "HSMPrivateKey": "keys",
    "HSMRSAPrivateKey": "keys",
    "KeyInfo": "keystore",
    "KeyStore": "keystore",
    "open_keystore": "keystore",
    "KeyType": "keytypes",
}


def __getattr__(name: str) -> Any:
    module = _LATER.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "HSMConfig",
    "HSMEd25519PrivateKey",
    "HSMEllipticCurvePrivateKey",
    "HSMError",
    "HSMPrivateKey",
    "HSMRSAPrivateKey",
    "KeyExists",
    "KeyInfo",
    "KeyNotFound",
    "KeyStore",
    "KeyType",
    "ModuleNotFound",
    "Pin",
    "PinError",
    "SessionLost",
    "SigningFailed",
    "TokenNotFound",
    "UnsupportedMechanism",
    "open_keystore",
    "read_pin",
]
