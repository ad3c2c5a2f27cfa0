"""Misconfiguration and misuse give clear errors that name the problem, never the PIN."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pkcs11 import Mechanism

from idmint.errors import IdmintError
from idmint.hsm import (
    HSMConfig,
    KeyExists,
    KeyNotFound,
    KeyStore,
    KeyType,
    ModuleNotFound,
    Pin,
    PinError,
    TokenNotFound,
    UnsupportedMechanism,
)
from idmint.hsm.config import read_pin
from idmint.hsm.softhsm import SoftHSMToken


def test_wrong_pin_is_refused_without_echoing_it(token: SoftHSMToken, no_pin_env: None) -> None:
    with pytest.raises(PinError, match="refused the PIN") as caught:
        KeyStore(token.hsm_config(), pin=Pin("not-the-pin-0000"))
    assert token.label in str(caught.value)
    assert "not-the-pin-0000" not in str(caught.value)
    assert "not-the-pin-0000" not in repr(caught.value.args)


def test_pin_from_environment_wins(
    token: SoftHSMToken, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IDMINT_HSM_PIN", token.user_pin_file.read_text().strip())
    config = HSMConfig(
        module=token.module,
        token_label=token.label,
        pin_file=str(tmp_path / "absent.pin"),
        env=token.hsm_config().env,
    )
    with KeyStore(config) as store:
        assert store.list_keys() == []


def test_pin_file_problems(tmp_path: Path, no_pin_env: None) -> None:
    with pytest.raises(PinError, match="no HSM PIN: set IDMINT_HSM_PIN"):
        read_pin(None)
    with pytest.raises(PinError, match="cannot read the PIN file"):
        read_pin(tmp_path / "missing.pin")
    loose = tmp_path / "loose.pin"
    loose.write_text("1234")
    os.chmod(loose, 0o644)
    with pytest.raises(PinError, match="readable by group or others; chmod 600"):
        read_pin(loose)
    os.chmod(loose, 0o600)
    pin = read_pin(loose)
    assert pin.reveal() == "1234"
    assert "1234" not in repr(pin) and "1234" not in str(pin)


def test_missing_module(token: SoftHSMToken, no_pin_env: None) -> None:
    config = HSMConfig(module="/nonexistent/libpkcs11.so", token_label="x", pin_file="p")
    with pytest.raises(ModuleNotFound, match=r"/nonexistent/libpkcs11\.so"):
        KeyStore(config)


def test_module_that_is_not_pkcs11(tmp_path: Path, no_pin_env: None) -> None:
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not a shared object")
    with pytest.raises(ModuleNotFound, match="cannot load PKCS#11 module"):
        KeyStore(HSMConfig(module=str(bogus), token_label="x", pin_file="p"))


def test_missing_token(token: SoftHSMToken, no_pin_env: None) -> None:
    config = HSMConfig(
        module=token.module,
        token_label="no-such-token",
        pin_file=str(token.user_pin_file),
        env=token.hsm_config().env,
    )
    with pytest.raises(TokenNotFound, match="no token matches pkcs11:token=no-such-token"):
        KeyStore(config)


def test_token_by_uri(token: SoftHSMToken, no_pin_env: None) -> None:
    config = HSMConfig(
        module=token.module,
        token_uri=f"pkcs11:token={token.label};manufacturer=SoftHSM%20project",
        pin_file=str(token.user_pin_file),
        env=token.hsm_config().env,
    )
    with KeyStore(config) as store:
        assert store.token_label == token.label


def test_unknown_key(keystore: KeyStore) -> None:
    with pytest.raises(KeyNotFound, match="no private key 'nope' on the token"):
        keystore.get("nope")
    with pytest.raises(KeyNotFound, match="00112233"):
        keystore.sign(bytes.fromhex("00112233"), b"d" * 32, Mechanism.ECDSA)
    with pytest.raises(KeyNotFound, match="no key with CKA_ID"):
        keystore.destroy(b"\x01" * 16)


def test_duplicate_label(keystore: KeyStore) -> None:
    keystore.generate(KeyType.EC_P256, "same")
    with pytest.raises(KeyExists, match="'same' already exists"):
        keystore.generate(KeyType.EC_P384, "same")
    assert len(keystore.list_keys()) == 1


def test_unsupported_mechanism_names_key_and_mechanism(keystore: KeyStore) -> None:
    key = keystore.generate(KeyType.RSA_2048, "rsa")
    with pytest.raises(UnsupportedMechanism) as caught:
        keystore.sign(key.key_id, b"d" * 32, Mechanism.ECDSA)
    message = str(caught.value)
    assert "rsa-2048 key cannot sign with ECDSA" in message
    assert "mechanism=ECDSA" in message and key.key_id.hex() in message
    assert keystore.token_label in message


def test_unknown_key_type() -> None:
    with pytest.raises(UnsupportedMechanism, match="unknown key type 'dsa-1024'; use one of"):
        KeyType.parse("dsa-1024")


def test_errors_share_one_root() -> None:
    for error in (ModuleNotFound, TokenNotFound, PinError, KeyNotFound, UnsupportedMechanism):
        assert issubclass(error, IdmintError)
