"""Errors of the PKCS#11 key store.

python-pkcs11 turns return codes into exceptions without context; these add
what an operator needs to act: which module, token, key and mechanism. The
PIN is never part of any message.
"""

from __future__ import annotations

from idmint.errors import IdmintError


class HSMError(IdmintError):
    """Something went wrong talking to the PKCS#11 module or token."""

    code = "hsm-error"

    def __init__(
        self,
        message: str,
        *,
        token: str | None = None,
        key: str | None = None,
        mechanism: str | None = None,
    ) -> None:
        parts = [message]
        context = [
            f"{name}={value}"
            for name, value in (("token", token), ("key", key), ("mechanism", mechanism))
            if value
        ]
        if context:
            parts.append("(" + ", ".join(context) + ")")
        super().__init__(" ".join(parts))
        self.token = token
        self.key = key
        self.mechanism = mechanism


class ModuleNotFound(HSMError):
    """The PKCS#11 module (shared library) could not be found or loaded."""

    code = "hsm-module-not-found"


class TokenNotFound(HSMError):
    """No token with the requested label or URI is present."""

    code = "hsm-token-not-found"


class PinError(HSMError):
    """The PIN is missing, unreadable or was refused by the token."""

    code = "hsm-pin"


class KeyNotFound(HSMError):
    """No key matches the requested label, id or URI."""

    code = "hsm-key-not-found"


class KeyExists(HSMError):
    """A key with this label already exists on the token."""

    code = "hsm-key-exists"


class UnsupportedMechanism(HSMError):
    """The key type or signature algorithm is not supported by us or the token."""

    code = "hsm-unsupported-mechanism"


class SessionLost(HSMError):
    """The session or login was lost and could not be re-established."""

    code = "hsm-session-lost"


class SigningFailed(HSMError):
    """The token refused or failed a signing operation."""

    code = "hsm-signing-failed"


class InvalidURI(HSMError):
    """A PKCS#11 URI is malformed or asks for something we do not allow."""

    code = "hsm-invalid-uri"


class CryptokiError(HSMError):
    """A raw Cryptoki call (hsm/_cryptoki.py) returned an error code.

    The callers in hsm/ turn it into the specific error (PinError,
    SessionLost...) when they know what the code means for them.
    """

    code = "hsm-cryptoki"

    def __init__(self, function: str, rv: int) -> None:
        super().__init__(f"{function} returned CKR 0x{rv:08X}")
        self.function = function
        self.rv = rv
