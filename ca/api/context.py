"""Per-process state of the HTTP API: the CA service and the attestors.

Opened lazily on the first request of each worker, after gunicorn forked:
PKCS#11 sessions do not survive ``fork()``.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import current_app

from idmint.attestation import Attested, Attestor
from idmint.attestation.base import attestor_types
from idmint.attestation.join_token import JoinTokenAttestor, JoinTokenLedger
from idmint.attestation.k8s_psat import KubernetesPSATAttestor
from idmint.attestation.oidc import OIDCAttestor
from idmint.attestation.x509pop import X509PoPAttestor
from idmint.ca.api.limits import attestation_attempt, limit_identity
from idmint.ca.api.observe import set_caller
from idmint.ca.config import CAConfig
from idmint.ca.service import CAService
from idmint.ca.storage import spends
from idmint.ca.storage.ledgers import JoinTokens, Nonces, UsedEvidenceLedger
from idmint.ca.storage.writer import WriterClient


@dataclass
class APIState:
    """What the handlers use."""

    service: CAService
    attestors: dict[str, Attestor]
    tokens: JoinTokens
    nonces: Nonces
    used: UsedEvidenceLedger | WriterClient

    def attest(self, evidence: Any, now: datetime | None = None) -> Attested:
        """Run the attestor the evidence names and spend its one-time keys."""
        from idmint.ca.errors import BadRequest

        enabled = ", ".join(sorted(self.attestors))
        with attestation_attempt():
            if not isinstance(evidence, dict) or not isinstance(evidence.get("type"), str):
                raise BadRequest(
                    f"'attestation' must be an object with a 'type', one of: {enabled}"
                )
            kind = evidence["type"]
            attestor = self.attestors.get(kind)
            if attestor is None:
                known = kind in attestor_types()
                raise BadRequest(
                    f"attestation type {kind!r} is "
                    + ("not enabled on this server" if known else "unknown")
                    + f"; this server accepts: {enabled}"
                )
            now = now or datetime.now(UTC)
            attested = attestor.attest(evidence, now)
            set_caller(attested.subject)
            # Before the spend: a request over its identity's quota burns nothing.
            limit_identity(attested.spiffe_id or attested.subject)
            pending = spends.current()
            if pending is not None:  # spent with the credential's record (ca/storage/spends.py)
                pending.keys.extend(attested.replay_keys)
            else:
                self.used.spend(attested.replay_keys, now)
        return attested


def build_attestors(
    config: CAConfig, tokens: JoinTokenLedger, nonces: Nonces | spends.DeferredNonces
) -> dict[str, Attestor]:
    """Join tokens always; OIDC, Kubernetes and x509pop when configured."""
    section: dict[str, Any] = dict(config.extra.get("attestation", {}) or {})
    base = Path(config.data_dir)
    enabled = config.attestors()
    attestors: dict[str, Attestor] = {"join_token": JoinTokenAttestor(tokens)}
    if "oidc" in enabled:
        attestors["oidc"] = OIDCAttestor.from_config(section["oidc"], base)
    if "k8s_psat" in enabled:
        attestors["k8s_psat"] = KubernetesPSATAttestor.from_config(section["k8s_psat"], base)
    if "x509pop" in enabled:
        attestors["x509pop"] = X509PoPAttestor.from_config(section["x509pop"], base, nonces)
    return attestors


_lock = threading.Lock()


def state() -> APIState:
    """The worker's APIState, opened on first use."""
    app = current_app
    found: APIState | None = app.extensions.get("idmint")
    if found is None:
        with _lock:
            found = app.extensions.get("idmint")
            if found is None:
                config: CAConfig = app.config["IDMINT_CONFIG"]
                # Under `idmint server` the writer process makes the hot-path
                # writes (ca/writer.py says why); elsewhere this process does.
                socket_path = app.config.get("IDMINT_WRITER_SOCKET")
                writer = (
                    WriterClient(Path(socket_path), timeout=config.database_timeout + 3.0)
                    if socket_path
                    else None
                )
                service = CAService.open(config, run_migrations=False, recorder=writer)
                from idmint.ca.api import metrics

                service.keystore.sign_observer = metrics.HSM_SIGN_SECONDS.observe
                service.issuer.refusals.observer = metrics.count_refusal
                tokens = JoinTokens(service.database, service.trust_domain)
                nonces = Nonces(service.database)
                # Attestors check their single-use evidence; it is spent with
                # the credential's record, in one transaction (spends.py).
                ledger = spends.DeferredJoinTokens(service.database, writer or tokens)
                found = APIState(
                    service=service,
                    attestors=build_attestors(config, ledger, spends.DeferredNonces(nonces)),
                    tokens=tokens,
                    nonces=nonces,
                    used=writer or UsedEvidenceLedger(service.database),
                )
                app.extensions["idmint"] = found
                _start_rotation(service)
                # Everything made so far (modules, app, service, caches) lives
                # as long as the worker: move it out of the collector's sight.
                # Measured: a full collection of it paused a worker for 67 ms,
                # the p99 of a busy server; after freeze() one takes ~1 ms.
                gc.freeze()
    return found


ROTATION_INTERVAL = 10.0


def _start_rotation(service: CAService) -> None:
    """Each worker checks for due rotations and audit checkpoints; the database lets one act."""
    import logging

    from sqlalchemy.exc import SQLAlchemyError

    from idmint.ca.authority.checkpoints import AuditSettings, checkpoint_due
    from idmint.ca.authority.rotation import RotationPolicy, rotate_due
    from idmint.errors import IdmintError

    log = logging.getLogger("idmint.rotation")
    policy = RotationPolicy.from_config(service.config)
    audit_settings = AuditSettings.from_config(service.config)

    def loop() -> None:
        while True:
            try:
                for done in rotate_due(service.keystore, service.database, policy):
                    log.warning("rotation: %s", done)
                    service.issuer.invalidate()
                # Replay records and nonces are only needed until they expire.
                UsedEvidenceLedger(service.database).purge(datetime.now(UTC))
                # After rotating: a key change is anchored in the same round.
                checkpoint_due(
                    service.keystore, service.database, service.trust_domain.name, audit_settings
                )
            except (IdmintError, SQLAlchemyError, OSError) as error:
                # A passing failure (HSM, database, writer): the next round retries.
                log.warning("rotation check failed, retrying in %ss: %s", ROTATION_INTERVAL, error)
            except Exception:
                # A bug: retrying would hide it behind a warning every 10 s.
                log.exception("rotation check failed unexpectedly; rotation stopped in this worker")
                raise
            threading.Event().wait(ROTATION_INTERVAL)

    threading.Thread(target=loop, name="idmint-rotation", daemon=True).start()
