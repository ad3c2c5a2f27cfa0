"""The key store heals when the token drops sessions or the login."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256

from idmint.hsm import KeyNotFound, KeyStore, KeyType, PinError, _cryptoki
from idmint.hsm.softhsm import SoftHSMToken

# When a search meets a session the token already closed, python-pkcs11 0.10
# raises SessionHandleInvalid (which we handle) and later, from the search
# object's __del__, tries C_FindObjectsFinal on the dead handle and reports
# that as an "unraisable" exception. It is noise from the library, not a
# failure of ours, so it is ignored here and only here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_dead_operations() -> Iterator[None]:
    yield
    gc.collect()  # run those finalisers now, inside this module's filter


def _sign_and_verify(key: object) -> None:
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(b"after recovery", ec.ECDSA(SHA256()))
    key.public_key().verify(signature, b"after recovery", ec.ECDSA(SHA256()))


def test_all_sessions_closed_underneath(keystore: KeyStore) -> None:
    key = keystore.generate(KeyType.EC_P256, "heal-sessions")
    _sign_and_verify(key)
    idle_before = list(keystore.iter_pool())
    assert idle_before
    # What a YubiHSM2 does to sessions idle for 30 s, or a network HSM on failover.
    _cryptoki.close_all_sessions(keystore.module_path, keystore.slot_id)
    _sign_and_verify(key)
    assert all(s not in idle_before for s in keystore.iter_pool())


def test_login_lost_underneath(keystore: KeyStore) -> None:
    key = keystore.generate(KeyType.EC_P256, "heal-login")
    _sign_and_verify(key)
    _cryptoki.logout(keystore.module_path, keystore.slot_id)
    _sign_and_verify(key)
    # And a lookup by label (a different code path) works too after logout.
    _cryptoki.logout(keystore.module_path, keystore.slot_id)
    assert keystore.get("heal-login").key_id == key.key_id


def test_token_reinitialised_underneath_gives_a_clear_error(
    keystore: KeyStore, token: SoftHSMToken
) -> None:
    key = keystore.generate(KeyType.EC_P256, "doomed")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    _sign_and_verify(key)
    so_pin = token.so_pin_file.read_text().strip()
    user_pin = token.user_pin_file.read_text().strip()
    _cryptoki.close_all_sessions(keystore.module_path, keystore.slot_id)
    _cryptoki.init_token(keystore.module_path, keystore.slot_id, token.label, so_pin, user_pin)
    with pytest.raises(KeyNotFound) as caught:
        key.sign(b"x", ec.ECDSA(SHA256()))
    message = str(caught.value)
    assert key.key_id.hex() in message and token.label in message
    assert user_pin not in message and so_pin not in message


def test_token_reinitialised_with_another_pin(keystore: KeyStore, token: SoftHSMToken) -> None:
    key = keystore.generate(KeyType.EC_P256, "pin-changed")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    so_pin = token.so_pin_file.read_text().strip()
    _cryptoki.close_all_sessions(keystore.module_path, keystore.slot_id)
    _cryptoki.init_token(
        keystore.module_path, keystore.slot_id, token.label, so_pin, "a-new-pin-1234"
    )
    with pytest.raises(PinError, match="refused the PIN") as caught:
        key.sign(b"x", ec.ECDSA(SHA256()))
    assert "a-new-pin-1234" not in str(caught.value)
