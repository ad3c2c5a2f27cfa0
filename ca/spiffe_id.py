"""SPIFFE IDs and trust domains as validated, immutable values.

Follows the SPIFFE ID specification (github.com/spiffe/spiffe,
standards/SPIFFE-ID.md): section 2 (scheme ``spiffe``, no query, no
fragment), 2.1 (trust domain: the URI host, no userinfo, no port), 2.2 (path:
'/'-separated segments, no trailing '/') and 2.3 (at most 2048 bytes, trust
domain at most 255 bytes). The character sets are the spec's: trust domains
use ``a-z 0-9 . - _``; path segments use ``a-z A-Z 0-9 . - _``.

Parsing is strict on purpose: nothing is lowercased, decoded or trimmed, so
the text of a valid ID is already its canonical form and two IDs are equal
exactly when their strings are. Every error names the input and the reason.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from idmint.ca.errors import InvalidSpiffeID

_SCHEME = "spiffe"
_PREFIX = "spiffe://"
_MAX_ID_BYTES = 2048
_MAX_TRUST_DOMAIN_BYTES = 255
_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")
# RFC 3986 section 3.2: the authority ends at the first '/', '?' or '#'.
_AUTHORITY_END = re.compile(r"[/?#]")
# Inputs can be arbitrarily long; keep error messages (and logs) bounded.
_MAX_SHOWN = 80


def _shown(text: str) -> str:
    """Return the repr of ``text``, shortened if it is very long."""
    if len(text) <= _MAX_SHOWN:
        return repr(text)
    return f"{text[:_MAX_SHOWN]!r}... ({len(text)} characters)"


def _byte_length(text: str) -> int:
    """Return the UTF-8 length of ``text``, not failing on lone surrogates."""
    return len(text.encode("utf-8", "surrogatepass"))


def _check(subject: str, reason: str | None) -> None:
    """Raise InvalidSpiffeID for ``subject`` if there is a ``reason``."""
    if reason is not None:
        raise InvalidSpiffeID(f"{subject}: {reason}")


def _length_problem(text: str) -> str | None:
    """Return why the SPIFFE ID ``text`` is too long, or None."""
    length = _byte_length(text)
    if length > _MAX_ID_BYTES:
        return f"the whole ID is {length} bytes long; SPIFFE IDs are at most {_MAX_ID_BYTES} bytes"
    return None


def _trust_domain_problem(name: str) -> str | None:
    """Return why ``name`` is not a valid trust domain name, or None."""
    if not name:
        return "trust domain is missing; expected 'spiffe://<trust-domain>[/<path>]'"
    # Only a direct TrustDomain(...) call can get here with a scheme.
    if "://" in name:
        return "trust domain name has a scheme; give the bare name or use TrustDomain.parse"
    # userinfo and port are parts of a URI authority the spec forbids (2.1).
    if "@" in name:
        return "trust domain has userinfo ('@'); SPIFFE IDs carry no userinfo"
    if ":" in name:
        return "trust domain has a port (':'); SPIFFE IDs carry no port"
    length = _byte_length(name)
    if length > _MAX_TRUST_DOMAIN_BYTES:
        return (
            f"trust domain is {length} bytes long; "
            f"trust domains are at most {_MAX_TRUST_DOMAIN_BYTES} bytes"
        )
    if "%" in name:
        return "trust domain has percent-encoding ('%'); SPIFFE IDs are never percent-encoded"
    # The spec asks to refuse uppercase rather than normalise it, so that an ID
    # compares equal to another only when the two strings are identical.
    if any(char in string.ascii_uppercase for char in name):
        return "trust domain has an uppercase letter; trust domains are lowercase"
    for char in name:
        if char not in _TRUST_DOMAIN_CHARS:
            return (
                f"trust domain has the character {char!r}, which is not allowed; "
                "allowed are a-z, 0-9, '.', '-' and '_'"
            )
    return None


def _path_problem(path: str) -> str | None:
    """Return why ``path`` is not a valid SPIFFE ID path, or None."""
    # '#' cannot occur inside a query, so any '#' starts a fragment.
    if "#" in path:
        return "has a fragment ('#'); SPIFFE IDs carry no fragment"
    if "?" in path:
        return "has a query ('?'); SPIFFE IDs carry no query"
    if not path:
        return None
    if not path.startswith("/"):
        return "path does not start with '/'"
    # Checked before segments so that 'spiffe://td/' gets this clearer reason.
    if path.endswith("/"):
        return "path has a trailing '/'; remove it"
    for segment in path[1:].split("/"):
        if not segment:
            return "path has an empty segment ('//')"
        # Dot segments would make two strings name the same resource.
        if segment in (".", ".."):
            return f"path has a {segment!r} segment; relative segments are not allowed"
        if "%" in segment:
            return "path has percent-encoding ('%'); SPIFFE IDs are never percent-encoded"
        for char in segment:
            if char not in _SEGMENT_CHARS:
                return (
                    f"path has the character {char!r}, which is not allowed; "
                    "allowed are a-z, A-Z, 0-9, '.', '-' and '_'"
                )
    return None


def _scheme_problem(text: str) -> str | None:
    """Return why ``text`` does not start with ``spiffe://``, or None."""
    if text.startswith(_PREFIX):
        return None
    scheme, separator, _ = text.partition("://")
    if not separator:
        return f"has no scheme; SPIFFE IDs start with {_PREFIX!r}"
    if scheme.lower() == _SCHEME:
        return f"scheme {scheme!r} is not lowercase; the scheme must be {_SCHEME!r}"
    return f"scheme {scheme!r} is not {_SCHEME!r}"


@dataclass(frozen=True, order=True, slots=True)
class TrustDomain:
    """The trust domain of SPIFFE IDs, such as ``example.org``."""

    name: str

    def __post_init__(self) -> None:
        """Refuse a name that is not a valid trust domain."""
        if not isinstance(self.name, str):
            raise TypeError(f"trust domain name must be a str, not {type(self.name).__name__}")
        _check(f"trust domain name {_shown(self.name)}", _trust_domain_problem(self.name))

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Parse ``example.org`` or ``spiffe://example.org`` (no path)."""
        if "://" not in text:
            return cls(text)
        spiffe_id = SpiffeID.parse(text)
        if spiffe_id.path:
            raise InvalidSpiffeID(
                f"trust domain {_shown(text)}: has the path {_shown(spiffe_id.path)}; "
                "a trust domain has no path"
            )
        return spiffe_id.trust_domain

    def id_string(self) -> str:
        """Return the trust domain's SPIFFE ID, e.g. ``spiffe://example.org``."""
        return _PREFIX + self.name

    def spiffe_id(self, path: str = "") -> SpiffeID:
        """Return the SPIFFE ID with ``path`` (``""`` or starting with '/') in this domain."""
        return SpiffeID(self, path)

    def __str__(self) -> str:
        """Return the bare name, e.g. ``example.org``."""
        return self.name


@dataclass(frozen=True, order=True, slots=True)
class SpiffeID:
    """A SPIFFE ID: a trust domain and a path such as ``/ns/prod/sa/web`` (or ``""``)."""

    trust_domain: TrustDomain
    path: str = ""

    def __post_init__(self) -> None:
        """Refuse a path or total length the spec does not allow."""
        if not isinstance(self.trust_domain, TrustDomain):
            raise TypeError(
                f"trust_domain must be a TrustDomain, not {type(self.trust_domain).__name__}"
            )
        if not isinstance(self.path, str):
            raise TypeError(f"path must be a str, not {type(self.path).__name__}")
        # Name the parts as given: joined, a path without its '/' would mislead.
        subject = f"SPIFFE ID path {_shown(self.path)} in trust domain {self.trust_domain.name!r}"
        _check(subject, _path_problem(self.path))
        _check(subject, _length_problem(str(self)))

    @classmethod
    def parse(cls, text: str) -> SpiffeID:
        """Parse a SPIFFE ID such as ``spiffe://example.org/ns/prod/sa/web``."""
        subject = f"SPIFFE ID {_shown(text)}"
        if not text:
            raise InvalidSpiffeID(
                f"{subject}: is empty; expected 'spiffe://<trust-domain>[/<path>]'"
            )
        # Length first, so that huge inputs are refused before any other work.
        _check(subject, _length_problem(text))
        _check(subject, _scheme_problem(text))
        rest = text[len(_PREFIX) :]
        match = _AUTHORITY_END.search(rest)
        end = match.start() if match else len(rest)
        name, path = rest[:end], rest[end:]
        _check(subject, _trust_domain_problem(name))
        _check(subject, _path_problem(path))
        # Checked already with messages naming the whole input; the constructors
        # check again, which keeps "every instance is valid" true without exceptions.
        return cls(TrustDomain(name), path)

    @classmethod
    def from_parts(cls, trust_domain: TrustDomain | str, path: str) -> SpiffeID:
        """Build a SPIFFE ID from a trust domain (or its bare name) and a path."""
        if isinstance(trust_domain, str):
            trust_domain = TrustDomain(trust_domain)
        return cls(trust_domain, path)

    def member_of(self, trust_domain: TrustDomain) -> bool:
        """Return whether this ID belongs to ``trust_domain``."""
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        """Return the canonical URI, e.g. ``spiffe://example.org/ns/prod/sa/web``."""
        return _PREFIX + self.trust_domain.name + self.path
