"""``idmint init``: a new trust domain in a data directory.

All or nothing: everything is checked before anything is written, and if a
step fails after writing began, what this call created is removed again (the
directory it made, the key it generated on an external token). A directory
that already holds a trust domain is never touched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from idmint.ca import config as ca_config
from idmint.ca.authority.authorities import (
    RootInfo,
    authorities,
    create_audit_authority,
    create_root,
    describe_root,
)
from idmint.ca.authority.checkpoints import sign_checkpoint
from idmint.ca.errors import AlreadyInitialized
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database, migrate
from idmint.ca.storage.models import AuthorityKind
from idmint.errors import ConfigError
from idmint.hsm import HSMConfig, KeyStore, KeyType
from idmint.hsm.config import resolve_module
from idmint.hsm.softhsm import create_token
from idmint.hsm.uri import PKCS11URI

SOFTHSM_TOKEN_LABEL = "idmint"


@dataclass(frozen=True)
class ExternalToken:
    """An existing PKCS#11 module and token to use instead of a new SoftHSM token."""

    module: str | None
    token_label: str
    pin_file: str


def initialize(
    data_dir: Path,
    trust_domain: str,
    key_type: str = "ec-p256",
    root_lifetime: timedelta = timedelta(days=365),
    external: ExternalToken | None = None,
    database_url: str | None = None,
) -> RootInfo:
    """Create the data directory, its token, database and root authority.

    ``database_url`` puts the state in a shared database (PostgreSQL for
    several replicas) instead of SQLite in the data directory.
    """
    domain = TrustDomain.parse(trust_domain)
    parsed_key_type = KeyType.parse(key_type)
    if root_lifetime <= timedelta(0):
        raise ConfigError("the root lifetime must be positive")
    if (data_dir / ca_config.CONFIG_NAME).exists():
        raise AlreadyInitialized(
            f"{data_dir} already holds a trust domain ({ca_config.CONFIG_NAME} exists); "
            "nothing was changed"
        )
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise AlreadyInitialized(
            f"{data_dir} exists and is not an empty directory; choose a new path"
        )
    if external is not None:
        resolve_module(external.module)  # fail now if the module is missing
        if not Path(external.pin_file).is_file():
            raise ConfigError(f"PIN file {external.pin_file!r} does not exist")

    created_dir = not data_dir.exists()
    keystore: KeyStore | None = None
    root_key_id: bytes | None = None
    audit_key_id: bytes | None = None
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        hsm_section: dict[str, object]
        if external is None:
            token = create_token(data_dir / ca_config.HSM_DIR, SOFTHSM_TOKEN_LABEL)
            hsm_config = token.hsm_config()
            hsm_section = {
                "module": token.module,
                "token_label": token.label,
                "pin_file": str(token.user_pin_file.relative_to(data_dir)),
                "softhsm_conf": str(token.conf.relative_to(data_dir)),
                "max_sessions": hsm_config.max_sessions,
            }
        else:
            hsm_config = HSMConfig(
                module=external.module,
                token_label=external.token_label,
                pin_file=str(Path(external.pin_file).resolve()),
            )
            hsm_section = {
                "module": external.module,
                "token_label": external.token_label,
                "pin_file": hsm_config.pin_file,
                "max_sessions": hsm_config.max_sessions,
            }
        shared_url = database_url
        database_url = shared_url or ca_config.default_database_url(data_dir)
        migrate(database_url)
        database = Database(database_url)
        if authorities(database, AuthorityKind.ROOT):
            database.close()
            raise AlreadyInitialized(
                "the database already holds a trust domain; give a new database, "
                "or point a replica's config at it instead of running init"
            )
        keystore = KeyStore(hsm_config)
        try:
            root = create_root(
                keystore, database, domain.name, parsed_key_type, lifetime=root_lifetime
            )
            root_key_id = PKCS11URI.parse(root.key_uri).id
            # The audit log is signed from its first event (the root's creation) on.
            audit_key_id = PKCS11URI.parse(create_audit_authority(keystore, database).key_uri).id
            sign_checkpoint(keystore, database, domain.name)
        finally:
            database.close()
        # Written last: its presence marks a complete data directory.
        (data_dir / ca_config.CONFIG_NAME).write_text(
            ca_config.render(
                {
                    "ca": {
                        "trust_domain": domain.name,
                        "root_key_type": parsed_key_type.value,
                        "root_lifetime_days": root_lifetime.days,
                    },
                    "hsm": hsm_section,
                    "database": {"url": shared_url},
                }
            ),
            encoding="utf-8",
        )
    except BaseException:
        if keystore is not None and external is not None:
            for key_id in (root_key_id, audit_key_id):
                if key_id is not None:
                    keystore.destroy(key_id)
        if created_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:  # it was empty before this call: empty it again
            for child in data_dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    finally:
        if keystore is not None:
            keystore.close()
    assert root.certificate_pem is not None
    certificate = x509.load_pem_x509_certificate(root.certificate_pem.encode("ascii"))
    return describe_root(certificate, root.key_uri, root.key_type)
