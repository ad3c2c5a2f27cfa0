"""PKCS#11 key store: CA private keys that never leave the token.

Depends on nothing else of idmint's but the root of the error tree.
"""

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
from idmint.hsm.keys import (
    HSMEd25519PrivateKey,
    HSMEllipticCurvePrivateKey,
    HSMPrivateKey,
    HSMRSAPrivateKey,
)
from idmint.hsm.keystore import KeyInfo, KeyStore, open_keystore
from idmint.hsm.keytypes import KeyType

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
