"""Run by tests/ca/test_crash.py in a subprocess that is killed with SIGKILL.

Loops over rotations and revocations on a data directory, printing
``ACK revoke <serial>`` after each revocation committed and
``ACK rotate <kind>`` after each activation, until killed.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.ca.authority.authorities import authorities
from idmint.ca.authority.rotation import InvalidTransition, RotationPolicy, activate, prepare
from idmint.ca.config import load
from idmint.ca.issuance.entries import EntrySpec, EntryStore
from idmint.ca.revocation.revocations import revoke_credential
from idmint.ca.service import CAService
from idmint.ca.storage.models import AuthorityKind, CredentialKind


def main(data_dir: str) -> None:
    config = load(data_dir)
    service = CAService.open(config)
    policy = RotationPolicy.from_config(config)
    store = EntryStore(service.database, service.trust_domain)
    spiffe_id = f"spiffe://{config.trust_domain}/crash"
    if not [e for e in store.list() if e.spiffe_id == spiffe_id]:
        store.create(
            EntrySpec(spiffe_id, ["crash:test:1"], "tests", datetime.now(UTC) + timedelta(days=1)),
            actor="crash",
        )
    service.issuer.invalidate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    print("READY", flush=True)
    n = 0
    while True:
        n += 1
        svid = service.issuer.issue_x509(["crash:test:1"], csr)
        revoke_credential(service.database, CredentialKind.X509, svid.serial, "crash")
        print(f"ACK revoke {svid.serial}", flush=True)
        kind = AuthorityKind.JWT if n % 2 else AuthorityKind.INTERMEDIATE
        try:
            successor = prepare(service.keystore, service.database, kind, policy, "crash")
            activate(service.database, successor.id, "crash")
            service.issuer.invalidate()
            print(f"ACK rotate {kind.value} {successor.id}", flush=True)
        except InvalidTransition as exc:
            # A prepared one left over by an earlier kill: activate it.
            print(f"recovering: {exc}", flush=True)
            waiting = [
                a for a in authorities(service.database, kind) if a.state.value == "prepared"
            ]
            if waiting:
                activate(service.database, waiting[-1].id, "crash")


if __name__ == "__main__":
    main(sys.argv[1])
