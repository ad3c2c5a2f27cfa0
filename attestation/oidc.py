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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from idmint.attestation.base import AttestationFailed, Attested, Attestor, register, require
from idmint.attestation.jwks import JWKSSource, relative
from idmint.attestation.jwt import (
    LEEWAY,
    as_datetime,
    replay_key,
    shown,
    unverified_claims,
    verify_jwt,
)
from idmint.errors import ConfigError

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


@dataclass
class OIDCIssuer:
    """One trusted token issuer."""

    name: str
    issuer: str
    audience: str
    source: JWKSSource
    claims: Sequence[str] = field(default=DEFAULT_CLAIMS)
    max_lifetime: timedelta = timedelta(hours=1)


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
    selector_types = ("oidc",)

    def __init__(self, issuers: Sequence[OIDCIssuer]) -> None:
        self.by_issuer = {i.issuer.rstrip("/"): i for i in issuers}

    @classmethod
    def from_config(cls, section: Mapping[str, Any], base: Path) -> OIDCAttestor:
        """``[attestation.oidc.<name>]`` tables: issuer, audience, jwks_file | discovery, claims."""
        issuers = []
        for name, table in section.items():
            where = f"[attestation.oidc.{name}]"
            if not isinstance(table, Mapping):
                raise ConfigError(f"{where} must be a table")
            if not isinstance(table.get("issuer"), str) or not isinstance(
                table.get("audience"), str
            ):
                raise ConfigError(f"{where} needs issuer and audience (strings)")
            issuer = str(table["issuer"])
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
                    source=JWKSSource(
                        issuer,
                        relative(table.get("jwks_file"), base),
                        bool(table.get("discovery", False)),
                        ca_file=relative(table.get("ca_file"), base),
                    ),
                    claims=tuple(table.get("claims", default_claims)),
                )
            )
        return cls(issuers)

    def attest(self, evidence: Mapping[str, Any], now: datetime) -> Attested:
        token = require(evidence, "token")
        unverified_iss = unverified_claims(token).get("iss")
        if not isinstance(unverified_iss, str):
            unverified_iss = None
        issuer = self.by_issuer.get((unverified_iss or "").rstrip("/"))
        if issuer is None:
            raise AttestationFailed(
                f"token issuer {shown(unverified_iss)} is not a configured OIDC issuer"
            )
        verified = verify_jwt(
            token,
            issuer.source,
            issuer.issuer,
            issuer.audience,
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
