"""RFC 7512 PKCS#11 URIs."""

from __future__ import annotations

import pytest

from idmint.hsm.uri import PKCS11URI, InvalidURI


def test_parse_token_and_object() -> None:
    uri = PKCS11URI.parse("pkcs11:token=My%20Token;object=root;id=%01%ff;type=private")
    assert uri.token == "My Token"
    assert uri.object == "root"
    assert uri.id == b"\x01\xff"
    assert uri.type == "private"


def test_round_trip() -> None:
    original = PKCS11URI(token="idmint ca", object="k/1", id=b"\x00\x10", type="private")
    text = str(original)
    assert text == "pkcs11:token=idmint%20ca;object=k%2F1;id=%00%10;type=private"
    assert PKCS11URI.parse(text) == original


def test_slot_id() -> None:
    assert PKCS11URI.parse("pkcs11:slot-id=7").slot_id == 7


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("token=x", "must start with 'pkcs11:'"),
        ("pkcs11:token", "has no '=' value"),
        ("pkcs11:colour=blue", "'colour' is not known"),
        ("pkcs11:token=a;token=b", "appears twice"),
        ("pkcs11:slot-id=abc", "not a decimal number"),
        ("pkcs11:type=fish", "type 'fish' must be one of"),
        ("pkcs11:token=x?pin-value=1234", "may not carry a PIN"),
        ("pkcs11:token=x?pin-source=file:/p", "may not carry a PIN"),
        ("pkcs11:token=%ff", "is not UTF-8"),
    ],
)
def test_invalid(text: str, reason: str) -> None:
    with pytest.raises(InvalidURI, match=reason) as caught:
        PKCS11URI.parse(text)
    assert "1234" not in str(caught.value)
