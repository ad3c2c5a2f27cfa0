"""``join_token``: a one-time secret an admin minted for one SPIFFE ID.

Tokens are stored hashed (SHA-256: they are 32 random bytes, so a slow hash
adds nothing) and consumed atomically by the database, so of many parallel
uses exactly one succeeds. The token names its SPIFFE ID; the CA then takes
TTLs and DNS names from that ID's registration entry.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from idmint.attestation.base import AttestationFailed, Attested, Attestor, register, require

TOKEN_BYTES = 32
# A fixed prefix: a token can never begin with "-" (which argparse, click and
# shells read as an option), and secret scanners can recognise leaked tokens.
TOKEN_PREFIX = "idmjt_"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def new_token() -> str:
    """A fresh join token: ``idmjt_`` and 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class JoinTokenLedger(Protocol):
    """Where tokens live (the CA's database)."""

    def consume(self, token_hash: str, now: datetime) -> tuple[str, str]:
        """Mark the token used; return (token id, SPIFFE ID) or raise AttestationFailed."""
        ...


@register
class JoinTokenAttestor(Attestor):
    """Evidence: ``{"type": "join_token", "token": "..."}``."""

    type = "join_token"
    selector_types = ("join_token",)

    def __init__(self, ledger: JoinTokenLedger) -> None:
        self.ledger = ledger

    def attest(self, evidence: Mapping[str, Any], now: datetime) -> Attested:
        token = require(evidence, "token")
        if len(token) > 256 or not _TOKEN.fullmatch(token):
            raise AttestationFailed("the join token is malformed (expected URL-safe base64)")
        token_id, spiffe_id = self.ledger.consume(token_hash(token), now)
        return Attested(
            selectors=(f"join_token:id:{token_id}",),
            subject=f"join_token:{token_id}",
            spiffe_id=spiffe_id,
        )
