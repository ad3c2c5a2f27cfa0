"""Everything a running CA needs, opened from a configuration.

The server builds one :class:`CAService` per worker process, after the fork:
a PKCS#11 module initialised before ``fork()`` is not usable in the child.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from idmint.ca.anomaly.monitor import from_config as anomaly_monitor
from idmint.ca.authority.authorities import ensure_authorities
from idmint.ca.authority.checkpoints import AuditSettings
from idmint.ca.config import CAConfig
from idmint.ca.issuance.entries import EntryStore
from idmint.ca.issuance.issuer import Issuer
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database, migrate
from idmint.ca.storage.recorder import Recorder, RecordSink
from idmint.hsm import KeyStore, KeyType


@dataclass
class CAService:
    """Open handles of one trust domain: token, database, issuer."""

    config: CAConfig
    trust_domain: TrustDomain
    keystore: KeyStore
    database: Database
    recorder: RecordSink
    issuer: Issuer
    entries: EntryStore

    @classmethod
    def open(
        cls, config: CAConfig, run_migrations: bool = True, recorder: RecordSink | None = None
    ) -> CAService:
        """Open everything; ``recorder``: where issuance records go (default: in-process)."""
        if run_migrations:
            migrate(config.database_url)
        trust_domain = TrustDomain(config.trust_domain)
        keystore = KeyStore(config.hsm)
        database = Database(config.database_url, timeout=config.database_timeout)
        try:
            ensure_authorities(
                keystore,
                database,
                trust_domain.name,
                intermediate_key_type=KeyType.parse(config.intermediate_key_type),
                intermediate_lifetime=timedelta(hours=config.intermediate_lifetime_hours),
                jwt_algorithm_=config.jwt_algorithm,
                jwt_lifetime=timedelta(hours=config.jwt_lifetime_hours),
                audit_lifetime=AuditSettings.from_config(config).key_lifetime,
            )
            recorder = recorder or Recorder(database)
            anomaly = anomaly_monitor(
                database, config.extra.get("anomaly"), recorder, str(config.config_path)
            )
            issuer = Issuer(
                keystore,
                database,
                trust_domain,
                config.issuer_url,
                recorder=recorder,
                cache_seconds=config.cache_seconds,
                crl_url=config.crl_url,
                ocsp_url=config.ocsp_url,
                anomaly=anomaly if anomaly.settings.enabled else None,
            )
        except BaseException:
            keystore.close()
            database.close()
            raise
        return cls(
            config=config,
            trust_domain=trust_domain,
            keystore=keystore,
            database=database,
            recorder=recorder,
            issuer=issuer,
            entries=EntryStore(database, trust_domain),
        )

    def close(self) -> None:
        self.recorder.close()
        self.keystore.close()
        self.database.close()
