"""``k8s_psat``: Kubernetes projected service-account tokens.

The token is verified against the cluster's service-account issuer JWKS
(file or discovery) and must name idmint's audience. Selectors:
``k8s:ns``, ``k8s:sa``, ``k8s:pod-name``, ``k8s:pod-uid`` and, when the
cluster is named in config, ``k8s:cluster``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from idmint.attestation.base import AttestationFailed, Attested, Attestor, register, require
from idmint.attestation.jwks import JWKSSource, relative
from idmint.attestation.jwt import LEEWAY, as_datetime, replay_key, verify_jwt
from idmint.errors import ConfigError

#: Kubernetes caps projected tokens at expirationSeconds (default 1 h); the
#: kubelet may extend one to a year only with --service-account-extend-token-expiration
#: for legacy clients, which idmint is not.
MAX_LIFETIME = timedelta(days=2)


@register
class KubernetesPSATAttestor(Attestor):
    """Evidence: ``{"type": "k8s_psat", "token": "<projected SA token>"}``."""

    type = "k8s_psat"
    selector_types = ("k8s",)

    def __init__(
        self, issuer: str, audience: str, source: JWKSSource, cluster: str | None = None
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.source = source
        self.cluster = cluster

    @classmethod
    def from_config(cls, table: Mapping[str, Any], base: Path) -> KubernetesPSATAttestor:
        if not isinstance(table.get("issuer"), str):
            raise ConfigError("[attestation.k8s_psat] needs issuer (the cluster's issuer URL)")
        issuer = str(table["issuer"])
        return cls(
            issuer=issuer,
            audience=str(table.get("audience", "idmint")),
            source=JWKSSource(
                issuer,
                relative(table.get("jwks_file"), base),
                bool(table.get("discovery", False)),
                ca_file=relative(table.get("ca_file"), base),
            ),
            cluster=table.get("cluster"),
        )

    def attest(self, evidence: Mapping[str, Any], now: datetime) -> Attested:
        token = require(evidence, "token")
        verified = verify_jwt(
            token, self.source, self.issuer, self.audience, max_lifetime=MAX_LIFETIME
        )
        claims = verified.claims
        info = claims.get("kubernetes.io")
        if not isinstance(info, dict):
            raise AttestationFailed(
                "token has no 'kubernetes.io' claim: use a projected service-account token"
            )
        namespace = info.get("namespace")
        account = info.get("serviceaccount") or {}
        pod = info.get("pod") or {}
        if not (isinstance(namespace, str) and isinstance(account, dict) and isinstance(pod, dict)):
            raise AttestationFailed("token's kubernetes.io claim is malformed")
        if not pod.get("name"):
            raise AttestationFailed(
                "token is not bound to a pod; mount a projected token (serviceAccountToken volume)"
            )
        selectors = [f"k8s:ns:{namespace}", f"k8s:sa:{account.get('name')}"]
        selectors += [f"k8s:pod-name:{pod.get('name')}", f"k8s:pod-uid:{pod.get('uid')}"]
        if self.cluster:
            selectors.append(f"k8s:cluster:{self.cluster}")
        expires = as_datetime(float(claims["exp"])) + LEEWAY
        return Attested(
            selectors=tuple(sorted(selectors)),
            subject=f"k8s:{namespace}/{account.get('name')}/{pod.get('name')}",
            replay_keys=((replay_key("k8s", claims, token), expires),),
        )
