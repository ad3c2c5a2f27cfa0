"""``oidc``: CI pipelines prove themselves with their platform's OIDC token.

GitHub Actions (issuer https://token.actions.githubusercontent.com), GitLab
CI id_tokens (issuer = the instance URL) or any OIDC issuer with a JWKS.
Each configured issuer has a name, an expected audience and a JWKS source
(a local file for air-gapped sites, or the issuer's discovery document).
Selected claims become selectors ``oidc:<name>:<claim>:<value>``, e.g.
``oidc:github:repository:org/repo``. A token is good once: its jti (or
digest) is a replay key until it expires.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import josepy

from idmint.attestation.base import AttestationFailed, Attested, Attestor, register, require
from idmint.attestation.jwt import LEEWAY, as_datetime, load_jwks, replay_key, verify_jwt

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
GITHUB_CLAIMS = (
    "sub",
    "repository",
    "repository_id",
    "repository_owner",
    "ref",
    "ref_type",
    "environment",
    "workflow_ref",
    "job_workflow_ref",
    "event_name",
    "actor",
)
GITLAB_CLAIMS = (
    "sub",
    "namespace_path",
    "project_path",
    "ref",
    "ref_type",
    "ref_protected",
    "environment",
    "pipeline_source",
    "ci_config_ref_uri",
)
DEFAULT_CLAIMS = ("sub",)


class JWKSSource:
    """Keys of one issuer: a local JWKS file, or the issuer's discovery document.

    Fetched keys are kept for ``refresh_seconds``; an unknown kid triggers one
    early refresh (issuers rotate keys), at most once a minute.
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
            raise ValueError(f"issuer {issuer}: give jwks_file or discovery = true")
        self.issuer = issuer.rstrip("/")
        self.jwks_file = jwks_file
        self.discovery = discovery
        self.refresh_seconds = refresh_seconds
        self.ca_file = ca_file
        self._keys: dict[str, josepy.JWK] = {}
        self._fetched = 0.0
        self._lock = threading.Lock()

    def _fetch_json(self, url: str) -> Any:
        context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return json.loads(response.read(1_000_000))

    def _load(self) -> dict[str, josepy.JWK]:
        if self.jwks_file:
            try:
                return load_jwks(json.loads(Path(self.jwks_file).read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise AttestationFailed(f"cannot read JWKS file {self.jwks_file}: {exc}") from None
        try:
            document = self._fetch_json(f"{self.issuer}/.well-known/openid-configuration")
            return load_jwks(self._fetch_json(str(document["jwks_uri"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AttestationFailed(f"cannot fetch the JWKS of {self.issuer}: {exc}") from None

    def keys(self, kid: str | None) -> dict[str, josepy.JWK]:
        with self._lock:
            age = time.monotonic() - self._fetched
            stale = age > self.refresh_seconds
            missing = kid is not None and kid not in self._keys and age > 60
            if not self._keys or stale or missing or self.jwks_file:
                self._keys = self._load()
                self._fetched = time.monotonic()
            return self._keys


@dataclass
class OIDCIssuer:
    """One trusted token issuer."""

    name: str
    issuer: str
    audience: str
    source: JWKSSource
    claims: Sequence[str] = field(default=DEFAULT_CLAIMS)
    max_lifetime: timedelta = timedelta(hours=1)


def _kid_of(token: str) -> str | None:
    import base64

    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        kid = header.get("kid")
        return kid if isinstance(kid, str) else None
    except (ValueError, IndexError, AttributeError):
        return None


def _selector_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        text = str(value)
        return text if text and not any(c.isspace() for c in text) else None
    return None


@register
class OIDCAttestor(Attestor):
    """Evidence: ``{"type": "oidc", "token": "<JWT>"}``."""

    type = "oidc"

    def __init__(self, issuers: Sequence[OIDCIssuer]) -> None:
        self.by_issuer = {i.issuer.rstrip("/"): i for i in issuers}

    @classmethod
    def from_config(cls, section: Mapping[str, Any], base: Path) -> OIDCAttestor:
        """``[attestation.oidc.<name>]`` tables: issuer, audience, jwks_file | discovery, claims."""
        issuers = []
        for name, table in section.items():
            if not isinstance(table, Mapping):
                raise ValueError(f"[attestation.oidc.{name}] must be a table")
            issuer = str(table["issuer"])
            jwks_file = table.get("jwks_file")
            if jwks_file and not Path(jwks_file).is_absolute():
                jwks_file = str(base / jwks_file)
            default_claims = (
                GITHUB_CLAIMS
                if issuer == GITHUB_ISSUER
                else GITLAB_CLAIMS
                if "gitlab" in issuer
                else DEFAULT_CLAIMS
            )
            issuers.append(
                OIDCIssuer(
                    name=name,
                    issuer=issuer,
                    audience=str(table["audience"]),
                    source=JWKSSource(issuer, jwks_file, bool(table.get("discovery", False))),
                    claims=tuple(table.get("claims", default_claims)),
                )
            )
        return cls(issuers)

    def attest(self, evidence: Mapping[str, Any], now: datetime) -> Attested:
        token = require(evidence, "token")
        unverified_iss = _unverified_issuer(token)
        issuer = self.by_issuer.get((unverified_iss or "").rstrip("/"))
        if issuer is None:
            raise AttestationFailed(
                f"token issuer {unverified_iss!r} is not a configured OIDC issuer"
            )
        verified = verify_jwt(
            token,
            issuer.source.keys(_kid_of(token)),
            issuer.issuer,
            issuer.audience,
            now,
            max_lifetime=issuer.max_lifetime,
        )
        claims = verified.claims
        selectors = []
        for claim in issuer.claims:
            value = _selector_value(claims.get(claim))
            if value is not None:
                selectors.append(f"oidc:{issuer.name}:{claim}:{value}")
        expires = as_datetime(float(claims["exp"])) + LEEWAY
        return Attested(
            selectors=tuple(sorted(selectors)),
            subject=f"oidc:{issuer.name}:{claims.get('sub')}",
            replay_keys=((replay_key("oidc", claims, token), expires),),
        )


def _unverified_issuer(token: str) -> str | None:
    import base64

    try:
        payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        issuer = payload.get("iss")
        return issuer if isinstance(issuer, str) else None
    except (ValueError, IndexError, AttributeError):
        raise AttestationFailed("the token is not a compact JWT with a JSON payload") from None
