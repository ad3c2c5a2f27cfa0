"""A SoftHSM v2 token of its own inside a directory.

Used by ``idmint init`` for the embedded default and by the tests for a fresh
token per run. The token is initialised through PKCS#11 (``C_InitToken``,
``C_InitPIN``) rather than ``softhsm2-util``, whose only way to take a PIN is
argv. PINs are random and written to files of mode 0600.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from idmint.hsm import _cryptoki
from idmint.hsm import module as modules
from idmint.hsm.config import HSMConfig, find_softhsm
from idmint.hsm.errors import CryptokiError, HSMError

CONF_NAME = "softhsm2.conf"
TOKENS_DIR = "tokens"
USER_PIN_FILE = "user.pin"
SO_PIN_FILE = "so.pin"
_TOKEN_INITIALIZED = 0x400  # CKF_TOKEN_INITIALIZED


@dataclass(frozen=True)
class SoftHSMToken:
    """Paths of a SoftHSM token made by :func:`create_token`."""

    directory: Path
    label: str
    module: str
    secrets_dir: Path

    @property
    def conf(self) -> Path:
        return self.directory / CONF_NAME

    @property
    def user_pin_file(self) -> Path:
        return self.secrets_dir / USER_PIN_FILE

    @property
    def so_pin_file(self) -> Path:
        return self.secrets_dir / SO_PIN_FILE

    def hsm_config(self, max_sessions: int = 8) -> HSMConfig:
        return HSMConfig(
            module=self.module,
            token_label=self.label,
            pin_file=str(self.user_pin_file),
            max_sessions=max_sessions,
            env={"SOFTHSM2_CONF": str(self.conf)},
        )


def _write_secret(path: Path, value: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def write_conf(directory: Path) -> Path:
    """Write a softhsm2.conf whose token directory is ``directory/tokens``."""
    tokens = directory / TOKENS_DIR
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = directory / CONF_NAME
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    conf.chmod(0o600)
    return conf


def create_token(
    directory: Path,
    label: str,
    module: str | None = None,
    secrets_dir: Path | None = None,
) -> SoftHSMToken:
    """Create a SoftHSM token labelled ``label`` in ``directory``, with random PINs.

    Several tokens may share one directory (and so one softhsm2.conf); give
    each its own ``secrets_dir`` for its PIN files then.
    """
    module_path = module or find_softhsm()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_dir = secrets_dir or directory
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = write_conf(directory)
    user_pin = secrets.token_urlsafe(18)
    so_pin = secrets.token_urlsafe(18)
    _write_secret(secrets_dir / USER_PIN_FILE, user_pin)
    _write_secret(secrets_dir / SO_PIN_FILE, so_pin)
    loaded = modules.acquire(module_path, {"SOFTHSM2_CONF": str(conf)})
    try:
        for slot in loaded.lib.get_slots(token_present=True):
            token = slot.get_token()
            if token.label == label and token.flags & _TOKEN_INITIALIZED:
                raise HSMError(f"a token labelled {label!r} already exists", token=label)
        free = [
            slot
            for slot in loaded.lib.get_slots(token_present=True)
            if not slot.get_token().flags & _TOKEN_INITIALIZED
        ]
        if not free:
            raise HSMError("SoftHSM offers no free slot for a new token", token=label)
        try:
            _cryptoki.init_token(module_path, free[0].slot_id, label, so_pin, user_pin)
        except CryptokiError as exc:
            raise HSMError(f"cannot initialise the token: {exc}", token=label) from None
    finally:
        modules.release(loaded)
    return SoftHSMToken(
        directory=directory, label=label, module=module_path, secrets_dir=secrets_dir
    )
