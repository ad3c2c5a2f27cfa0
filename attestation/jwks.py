"""The keys of one JWT issuer: a local JWKS file, or the issuer's discovery document.

OpenID Connect Discovery 1.0 section 4: the document is at
``<issuer>/.well-known/openid-configuration``, its ``issuer`` must be the
issuer URL itself and its ``jwks_uri`` names the JWKS (RFC 7517). PyJWT's
``PyJWKClient`` fetches and caches that JWKS and refetches it once, after
a cooldown, for a kid it does not know (issuers rotate keys); the discovery
document itself is ours to fetch (PyJWT has no client for it).

A key that cannot be found is the token's problem (AttestationFailed, 401);
keys that cannot be read are ours (AttestationUnavailable, 503).
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt

from idmint.attestation.errors import AttestationFailed, AttestationUnavailable
from idmint.errors import ConfigError

#: The most we read of a discovery document.
MAX_DOCUMENT_BYTES = 1_000_000
FETCH_TIMEOUT = 10.0
#: The least time between two fetches of the JWKS for an unknown kid.
UNKNOWN_KID_COOLDOWN = 60.0


def _usable(document: Any, where: str) -> dict[str, Any]:
    """The JWKS with only the keys PyJWT can load.

    An issuer may publish keys we cannot use (symmetric, other curves), and
    PyJWT 2.x lets a malformed one escape as KeyError from the whole set.
    One bad key must not stop the good ones.
    """
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise AttestationUnavailable(f"{where} is not a JWKS (a JSON object with a 'keys' list)")
    usable = []
    for item in keys:
        try:
            jwt.PyJWK(item)
        except (jwt.PyJWTError, KeyError, TypeError, ValueError, AttributeError):
            continue
        usable.append(item)
    if not usable:
        raise AttestationUnavailable(f"{where} holds no usable key")
    return {**document, "keys": usable}


def _signing_keys(document: Any, where: str) -> dict[str, jwt.PyJWK]:
    """kid -> key of a JWKS document: signing keys with a kid, of types we can use."""
    keyset = jwt.PyJWKSet.from_dict(_usable(document, where))
    return {
        key.key_id: key for key in keyset.keys if key.key_id and key.public_key_use in ("sig", None)
    }


class _JWKSClient(jwt.PyJWKClient):
    """PyJWKClient, reading past keys it cannot load (its documented hook)."""

    def fetch_data(self) -> Any:
        return _usable(super().fetch_data(), f"the JWKS at {self.uri}")


class JWKSSource:
    """Keys of one issuer, from ``jwks_file`` or (``discovery``) the issuer's own documents.

    A JWKS file is read again when it changes, so an operator can replace it
    without a restart. Fetched keys are cached for ``refresh_seconds``.
    """

    def __init__(
        self,
        issuer: str,
        jwks_file: str | None = None,
        discovery: bool = False,
        refresh_seconds: float = 3600,
        ca_file: str | None = None,
    ) -> None:
        if not jwks_file and not discovery:
            raise ConfigError(f"issuer {issuer}: give jwks_file or discovery = true")
        if refresh_seconds <= 0:
            raise ConfigError(f"issuer {issuer}: the JWKS refresh time must be positive")
        self.issuer = issuer.rstrip("/")
        self.jwks_file = jwks_file
        self.discovery = discovery
        self.refresh_seconds = refresh_seconds
        self.ca_file = ca_file
        self._lock = threading.Lock()
        self._file_state: tuple[int, int, int] | None = None
        self._file_keys: dict[str, jwt.PyJWK] = {}
        self._client: _JWKSClient | None = None
        self._discovered = 0.0

    def signing_key(self, kid: str) -> jwt.PyJWK:
        """The issuer's key named ``kid``."""
        if self.jwks_file:
            found = self._from_file().get(kid)
        else:
            found = self._from_discovery(kid)
        if found is None:
            raise AttestationFailed(f"token key id {kid!r} is not in the JWKS of {self.issuer}")
        return found

    def _from_file(self) -> dict[str, jwt.PyJWK]:
        assert self.jwks_file is not None
        path = Path(self.jwks_file)
        try:
            stat = path.stat()
            state = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            with self._lock:
                if state != self._file_state:
                    document = json.loads(path.read_text(encoding="utf-8"))
                    self._file_keys = _signing_keys(document, f"JWKS file {path}")
                    self._file_state = state
                return self._file_keys
        except (OSError, ValueError) as exc:
            raise AttestationUnavailable(
                f"cannot read the JWKS file {path} of {self.issuer}: {exc}"
            ) from None

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def _jwks_client(self) -> _JWKSClient:
        with self._lock:
            stale = time.monotonic() - self._discovered > self.refresh_seconds
            if self._client is not None and not stale:
                return self._client
            try:
                jwks_uri = self._discover()
            except AttestationUnavailable:
                if self._client is None:
                    raise
                # Keep the keys we have; ask for the document again in a minute.
                self._discovered = time.monotonic() - self.refresh_seconds + UNKNOWN_KID_COOLDOWN
                return self._client
            if self._client is None or self._client.uri != jwks_uri:
                self._client = _JWKSClient(
                    jwks_uri,
                    cache_jwk_set=True,
                    lifespan=self.refresh_seconds,
                    timeout=FETCH_TIMEOUT,
                    ssl_context=self._context(),
                    cooldown_duration=UNKNOWN_KID_COOLDOWN,
                )
            self._discovered = time.monotonic()
            return self._client

    def _discover(self) -> str:
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT, context=self._context()) as r:
                document = json.loads(r.read(MAX_DOCUMENT_BYTES))
        except (OSError, ValueError, urllib.error.URLError) as exc:
            raise AttestationUnavailable(
                f"cannot fetch the discovery document {url}: {exc}; "
                "check the issuer URL and that this server can reach it"
            ) from None
        if not isinstance(document, dict) or not isinstance(document.get("jwks_uri"), str):
            raise AttestationUnavailable(f"the discovery document {url} has no jwks_uri")
        if str(document.get("issuer", "")).rstrip("/") != self.issuer:
            raise AttestationUnavailable(
                f"the discovery document {url} names the issuer {document.get('issuer')!r}, "
                f"not {self.issuer!r} (OpenID Connect Discovery 1.0 section 4.3)"
            )
        return str(document["jwks_uri"])

    def _from_discovery(self, kid: str) -> jwt.PyJWK | None:
        try:
            client = self._jwks_client()
            client.get_signing_keys()  # a JWKS that cannot be read is ours, not the token's
        except jwt.PyJWTError as exc:
            raise AttestationUnavailable(f"cannot read the JWKS of {self.issuer}: {exc}") from None
        try:
            return client.get_signing_key(kid)
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError) as exc:
            raise AttestationUnavailable(f"cannot read the JWKS of {self.issuer}: {exc}") from None
        except jwt.PyJWKClientError:
            return None  # not there, even after a refresh


def relative(path: str | None, base: Path) -> str | None:
    """A configured path, relative to the data directory unless absolute."""
    if not path:
        return None
    return path if os.path.isabs(path) else str(base / path)
