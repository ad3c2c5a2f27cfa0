"""Where the PKCS#11 module, token and PIN come from.

The PIN is read from ``IDMINT_HSM_PIN`` or from a file, never from argv (argv
is world-readable in /proc and lands in shell history). :class:`Pin` keeps it
out of ``repr`` so it cannot leak into logs or tracebacks by accident.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from idmint.hsm.errors import ModuleNotFound, PinError
from idmint.hsm.uri import PKCS11URI

PIN_ENV = "IDMINT_HSM_PIN"
MODULE_ENV = "IDMINT_PKCS11_MODULE"

# Where distributions put SoftHSM v2: Debian/Ubuntu (multiarch and legacy),
# Fedora/RHEL, Homebrew on Apple silicon and Intel.
SOFTHSM_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


class Pin:
    """A token PIN that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            raise PinError("the HSM PIN is empty")
        self._value = value

    def reveal(self) -> str:
        """The PIN itself, for the one call that logs in."""
        return self._value

    def __repr__(self) -> str:
        return "Pin(***)"

    __str__ = __repr__


def find_softhsm() -> str:
    """Return the path of SoftHSM's module, or raise naming the paths tried."""
    for candidate in SOFTHSM_PATHS:
        if Path(candidate).is_file():
            return candidate
    raise ModuleNotFound(
        "SoftHSM v2 was not found at any of "
        + ", ".join(SOFTHSM_PATHS)
        + "; install it (Debian: apt-get install softhsm2) or set "
        + f"{MODULE_ENV} to your PKCS#11 module"
    )


def resolve_module(configured: str | None) -> str:
    """The module path: explicit setting, then ``IDMINT_PKCS11_MODULE``, then SoftHSM."""
    path = configured or os.environ.get(MODULE_ENV)
    if not path:
        return find_softhsm()
    if not Path(path).is_file():
        raise ModuleNotFound(f"PKCS#11 module {path!r} does not exist or is not a file")
    return path


def read_pin(pin_file: str | Path | None) -> Pin:
    """The user PIN from ``IDMINT_HSM_PIN`` or else from ``pin_file``."""
    from_env = os.environ.get(PIN_ENV)
    if from_env:
        return Pin(from_env)
    if pin_file is None:
        raise PinError(f"no HSM PIN: set {PIN_ENV} or configure a PIN file")
    path = Path(pin_file)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PinError(f"cannot read the PIN file {str(path)!r}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PinError(f"the PIN file {str(path)!r} is readable by group or others; chmod 600 it")
    return Pin(text.strip())


@dataclass(frozen=True)
class HSMConfig:
    """How to reach one token: module, token (label or RFC 7512 URI), PIN file."""

    module: str | None = None
    token_label: str | None = None
    token_uri: str | None = None
    pin_file: str | None = None
    max_sessions: int = 8
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {self.max_sessions}")
        if not (self.token_label or self.token_uri):
            raise ValueError("HSMConfig needs token_label or token_uri")

    def token_selector(self) -> PKCS11URI:
        """The token to open as a URI (a bare label becomes ``pkcs11:token=LABEL``)."""
        if self.token_uri:
            return PKCS11URI.parse(self.token_uri)
        return PKCS11URI(token=self.token_label)
