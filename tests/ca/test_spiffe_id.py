"""Tests of SPIFFE ID and trust domain parsing (SPIFFE-ID.md sections 2 to 2.3)."""

from __future__ import annotations

import dataclasses
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idmint.ca.spiffe_id import InvalidSpiffeID, SpiffeID, TrustDomain
from idmint.errors import IdmintError

TRUST_DOMAIN_CHARS = string.ascii_lowercase + string.digits + ".-_"
SEGMENT_CHARS = string.ascii_letters + string.digits + ".-_"

# 2048 bytes exactly: "spiffe://example.org" is 20 bytes, "/" + 2027 letters.
LONGEST_ID = "spiffe://example.org/" + "a" * 2027
LONGEST_TRUST_DOMAIN = "a" * 255

VALID_IDS = [
    "spiffe://example.org",
    "spiffe://example.org/ns/prod/sa/web",
    "spiffe://staging.example.com/payments/web-fe",
    "spiffe://k8s-west.example.com/ns/staging/sa/default",
    "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
    "spiffe://a/B",
    "spiffe://td_with-all.chars09/Seg_Ment-With.All09",
    "spiffe://example.org/...",
    "spiffe://example.org/.hidden/..x/x..",
    "spiffe://1.2.3.4/x",
    "spiffe://-._/-._",
    LONGEST_ID,
    "spiffe://" + LONGEST_TRUST_DOMAIN,
]

INVALID_IDS = [
    ("", "is empty"),
    ("example.org/x", "has no scheme"),
    ("spiffe:example.org", "has no scheme"),
    ("spiffe:/example.org", "has no scheme"),
    ("https://example.org/x", "scheme 'https' is not 'spiffe'"),
    ("://example.org/x", "scheme '' is not 'spiffe'"),
    ("SPIFFE://example.org/x", "scheme 'SPIFFE' is not lowercase"),
    ("Spiffe://example.org", "scheme 'Spiffe' is not lowercase"),
    ("spiffe://", "trust domain is missing"),
    ("spiffe:///x", "trust domain is missing"),
    ("spiffe://Example.org/x", "trust domain has an uppercase letter; trust domains are lowercase"),
    ("spiffe://example.ORG", "uppercase letter"),
    ("spiffe://example.org:443/x", r"port \(':'\)"),
    ("spiffe://example.org:/x", r"port \(':'\)"),
    ("spiffe://user@example.org/x", r"userinfo \('@'\)"),
    ("spiffe://user:pw@example.org", r"userinfo \('@'\)"),
    ("spiffe://example.org/x?a=b", r"query \('\?'\)"),
    ("spiffe://example.org?a=b", r"query \('\?'\)"),
    ("spiffe://example.org/x#frag", r"fragment \('#'\)"),
    ("spiffe://example.org#frag", r"fragment \('#'\)"),
    ("spiffe://example.org/x?q#frag", r"fragment \('#'\)"),
    ("spiffe://example.org/a//b", r"empty segment \('//'\)"),
    ("spiffe://example.org//a", r"empty segment \('//'\)"),
    ("spiffe://example.org/", "trailing '/'"),
    ("spiffe://example.org/a/", "trailing '/'"),
    ("spiffe://example.org/a/./b", r"has a '\.' segment"),
    ("spiffe://example.org/.", r"has a '\.' segment"),
    ("spiffe://example.org/a/../b", r"has a '\.\.' segment"),
    ("spiffe://example.org/..", r"has a '\.\.' segment"),
    ("spiffe://example.org/a%20b", r"percent-encoding \('%'\)"),
    ("spiffe://example.org/%2e%2e", r"percent-encoding \('%'\)"),
    ("spiffe://ex%41mple.org", r"trust domain has percent-encoding \('%'\)"),
    ("spiffe://example.org/a b", "path has the character ' '"),
    ("spiffe://example.org/a+b", r"path has the character '\+'"),
    ("spiffe://example.org/caf\u00e9", "path has the character '\u00e9'"),
    ("spiffe://example.org/a\\b", r"path has the character '\\\\'"),
    ("spiffe://example.org/a\x00", r"path has the character '\\x00'"),
    ("spiffe://example.org/a\udc80", r"path has the character '\\udc80'"),
    ("spiffe://exa mple.org", "trust domain has the character ' '"),
    ("spiffe://example!.org", "trust domain has the character '!'"),
    ("spiffe://[::1]/x", r"port \(':'\)"),
    ("spiffe://b\u00fccher.de", "trust domain has the character '\u00fc'"),
    (LONGEST_ID + "a", "the whole ID is 2049 bytes long; SPIFFE IDs are at most 2048 bytes"),
    (
        "spiffe://" + LONGEST_TRUST_DOMAIN + "a",
        "trust domain is 256 bytes long; trust domains are at most 255 bytes",
    ),
]


@pytest.mark.parametrize("text", VALID_IDS)
def test_valid_id_round_trips(text: str) -> None:
    spiffe_id = SpiffeID.parse(text)
    assert str(spiffe_id) == text
    assert SpiffeID.parse(str(spiffe_id)) == spiffe_id
    assert len("spiffe://") + len(spiffe_id.trust_domain.name) + len(spiffe_id.path) == len(text)


@pytest.mark.parametrize(("text", "reason"), INVALID_IDS)
def test_invalid_id_is_refused_with_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeID, match=reason) as caught:
        SpiffeID.parse(text)
    message = str(caught.value)
    # The message starts by naming the input, so the user sees what to fix.
    assert message.startswith(f"SPIFFE ID {text!r}: ") or len(text) > 80


def test_long_input_is_shortened_in_message() -> None:
    text = "spiffe://example.org/" + "a" * 100_000
    with pytest.raises(InvalidSpiffeID, match="at most 2048 bytes") as caught:
        SpiffeID.parse(text)
    assert len(str(caught.value)) < 300
    assert "'spiffe://example.org/aaa" in str(caught.value)


def test_parts() -> None:
    spiffe_id = SpiffeID.parse("spiffe://example.org/ns/prod/sa/web")
    assert spiffe_id.trust_domain == TrustDomain("example.org")
    assert spiffe_id.path == "/ns/prod/sa/web"
    assert SpiffeID.parse("spiffe://example.org").path == ""


def test_error_type_and_code() -> None:
    assert issubclass(InvalidSpiffeID, IdmintError)
    assert InvalidSpiffeID.code == "invalid-spiffe-id"


def test_equality_and_hashing_by_value() -> None:
    a = SpiffeID.parse("spiffe://example.org/web")
    b = SpiffeID.from_parts("example.org", "/web")
    c = SpiffeID.parse("spiffe://example.org/Web")
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
    assert {a, b, c} == {a, c}
    assert {TrustDomain("example.org"), TrustDomain("example.org")} == {TrustDomain("example.org")}
    assert sorted([c, a]) == [c, a]  # 'W' sorts before 'w'
    assert TrustDomain("a.org") < TrustDomain("b.org")


def test_values_are_immutable() -> None:
    spiffe_id = SpiffeID.parse("spiffe://example.org/web")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spiffe_id.path = "/db"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spiffe_id.trust_domain.name = "evil.org"  # type: ignore[misc]
    assert str(spiffe_id) == "spiffe://example.org/web"


def test_member_of() -> None:
    spiffe_id = SpiffeID.parse("spiffe://example.org/web")
    assert spiffe_id.member_of(TrustDomain("example.org"))
    assert not spiffe_id.member_of(TrustDomain("example.com"))
    assert not spiffe_id.member_of(TrustDomain("sub.example.org"))


def test_trust_domain_api() -> None:
    td = TrustDomain("example.org")
    assert td.name == "example.org"
    assert str(td) == "example.org"
    assert td.id_string() == "spiffe://example.org"
    assert td.spiffe_id() == SpiffeID.parse("spiffe://example.org")
    assert td.spiffe_id("/ns/prod") == SpiffeID.parse("spiffe://example.org/ns/prod")
    assert td.spiffe_id("/x").member_of(td)


@pytest.mark.parametrize("text", ["example.org", "spiffe://example.org"])
def test_trust_domain_parse(text: str) -> None:
    assert TrustDomain.parse(text) == TrustDomain("example.org")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "trust domain name '': trust domain is missing"),
        ("Example.org", "trust domain name 'Example.org': trust domain has an uppercase letter"),
        ("example.org:443", r"port \(':'\)"),
        ("admin@example.org", r"userinfo \('@'\)"),
        ("example.org/x", "trust domain has the character '/'"),
        ("a" * 256, "256 bytes long"),
        ("spiffe://example.org/x", "trust domain 'spiffe://example.org/x': has the path '/x'"),
        ("spiffe://example.org/", "trailing '/'"),
        ("SPIFFE://example.org", "scheme 'SPIFFE' is not lowercase"),
        ("https://example.org", "scheme 'https' is not 'spiffe'"),
        ("spiffe://", "trust domain is missing"),
    ],
)
def test_trust_domain_parse_refuses(text: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeID, match=reason):
        TrustDomain.parse(text)


def test_trust_domain_constructor_takes_bare_name_only() -> None:
    with pytest.raises(InvalidSpiffeID, match="has a scheme; give the bare name"):
        TrustDomain("spiffe://example.org")


def test_from_parts() -> None:
    td = TrustDomain("example.org")
    assert str(SpiffeID.from_parts(td, "/a/b")) == "spiffe://example.org/a/b"
    assert str(SpiffeID.from_parts("example.org", "")) == "spiffe://example.org"


@pytest.mark.parametrize(
    ("trust_domain", "path", "reason"),
    [
        ("Example.org", "/a", "trust domain name 'Example.org': .*uppercase"),
        (
            "example.org",
            "a/b",
            "SPIFFE ID path 'a/b' in trust domain 'example.org': .*start with '/'",
        ),
        ("example.org", "/a//b", r"path '/a//b' .*empty segment"),
        ("example.org", "/a/", "trailing '/'"),
        ("example.org", "/..", r"'\.\.' segment"),
        ("example.org", "/a?b", "query"),
        ("example.org", "/a#b", "fragment"),
        ("example.org", "/a%41", "percent-encoding"),
        ("example.org", "/a*", r"character '\*'"),
        ("example.org", "/" + "a" * 2028, "the whole ID is 2049 bytes long"),
    ],
)
def test_from_parts_refuses(trust_domain: str, path: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeID, match=reason):
        SpiffeID.from_parts(trust_domain, path)


def test_constructor_type_checks() -> None:
    with pytest.raises(TypeError, match="must be a TrustDomain"):
        SpiffeID("example.org", "/a")  # type: ignore[arg-type]


# --- Properties ------------------------------------------------------------

trust_domain_names = st.text(alphabet=TRUST_DOMAIN_CHARS, min_size=1, max_size=40)
segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)
paths = st.lists(segments, max_size=8).map(lambda parts: "".join("/" + p for p in parts))
# Anything but the allowed characters and '/', which would only split a segment.
disallowed_chars = st.characters(codec=None).filter(lambda c: c not in SEGMENT_CHARS + "/")


@given(name=trust_domain_names, path=paths)
def test_any_allowed_id_parses_and_round_trips(name: str, path: str) -> None:
    text = f"spiffe://{name}{path}"
    spiffe_id = SpiffeID.parse(text)
    assert str(spiffe_id) == text
    assert spiffe_id.trust_domain.name == name
    assert spiffe_id.path == path
    assert SpiffeID.from_parts(name, path) == spiffe_id


@given(
    name=trust_domain_names,
    path=paths.filter(bool),
    char=disallowed_chars,
    data=st.data(),
)
def test_one_disallowed_char_in_path_is_refused(
    name: str, path: str, char: str, data: st.DataObject
) -> None:
    # After the leading '/', so the character lands in the path, not the host.
    where = data.draw(st.integers(min_value=1, max_value=len(path)))
    text = f"spiffe://{name}{path[:where]}{char}{path[where:]}"
    with pytest.raises(InvalidSpiffeID) as caught:
        SpiffeID.parse(text)
    # Every reason names the offending character ('?', '#' and '%' included).
    assert repr(char) in str(caught.value)
