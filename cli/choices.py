"""Option choices that the server's modules define, spelled here for the CLI's start-up.

``--help`` and shell completion read choices before any command runs; taking
them from ``idmint.hsm`` or the SQLAlchemy models would load PKCS#11 and
SQLAlchemy on every key press. tests/cli/test_lazy.py checks that these
equal the definitions they copy.
"""

from __future__ import annotations

#: idmint.hsm.KeyType values.
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519")
DEFAULT_KEY_TYPE = "ec-p256"
#: idmint.ca.storage.models.AuthorityKind values.
AUTHORITY_KINDS = ("root", "intermediate", "jwt", "audit")
#: idmint.ca.revocation.revocations.REASONS.
REVOCATION_REASONS = (
    "affiliationChanged",
    "cessationOfOperation",
    "keyCompromise",
    "superseded",
    "unspecified",
)
