"""``idmint svid x509 --watch``: keep an X509-SVID fresh on disk, as spiffe-helper does.

Renews by proof of possession at ``renew_at`` of each SVID's lifetime, with
jitter so a fleet started together does not renew together; sooner when the
server's status endpoint says to renew now. After each renewal the files are
replaced atomically and a command is run or a process signalled (nginx,
Envoy...). When the server is away it backs off with jitter and says so.
"""

from __future__ import annotations

import http.client
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.ca.issuance.pop import make_proof
from idmint.errors import IdmintError

STATUS_EVERY = 30.0
BACKOFF_MAX = 60.0


class Watcher:
    def __init__(
        self,
        server: str,
        bundle: str,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        issued: dict[str, Any],
        renew_at: float,
        run: str | None,
        signal_pid: int | None,
        signal_name: str,
    ) -> None:
        self.server, self.bundle, self.directory = server, bundle, directory
        self.key, self.issued = key, issued
        self.renew_at, self.run_command = renew_at, run
        self.signal_pid = signal_pid
        self.signal = signal.Signals[
            signal_name if signal_name.startswith("SIG") else f"SIG{signal_name}"
        ]
        self.stopping = False

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _due(self) -> float:
        """Unix time of the next renewal: ``renew_at`` of the lifetime, +-5% jitter."""
        from cryptography import x509

        leaf = x509.load_pem_x509_certificates(self.issued["chain_pem"].encode())[0]
        start = leaf.not_valid_before_utc.timestamp()
        life = leaf.not_valid_after_utc.timestamp() - start
        jitter = random.uniform(-0.05, 0.05) * life
        return start + life * self.renew_at + jitter

    def _renew(self) -> None:
        from idmint.cli.svid_commands import _new_key_and_csr, _post, _write_svid

        key, csr = _new_key_and_csr()
        proof = make_proof(self.issued["chain_pem"], self.key, "x509-renew", csr.encode())
        issued = _post(
            self.server, self.bundle, "/v1/svid/x509/renew", {"csr": csr, "proof": proof}
        )
        _write_svid(self.directory, key, issued)
        self.key, self.issued = key, issued
        click.echo(f"renewed {issued['spiffe_id']} until {issued['expires_at']}", err=True)
        if self.run_command:
            done = subprocess.run(shlex.split(self.run_command), check=False)
            if done.returncode:
                click.echo(f"--exec exited {done.returncode}", err=True)
        if self.signal_pid:
            try:
                import os

                os.kill(self.signal_pid, self.signal)
            except ProcessLookupError:
                click.echo(f"process {self.signal_pid} is gone; not signalled", err=True)

    def _told_to_renew(self) -> bool:
        from idmint.cli.svid_commands import _post

        status = _post(
            self.server, self.bundle, "/v1/svid/x509/status", {"chain": self.issued["chain_pem"]}
        )
        if status["reasons"]:
            click.echo(f"server says renew now: {', '.join(status['reasons'])}", err=True)
        return bool(status["renew_now"])

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        due = self._due()
        next_status = time.time() + STATUS_EVERY
        backoff = 1.0
        while not self.stopping:
            now = time.time()
            try:
                if now >= due or (now >= next_status and self._told_to_renew()):
                    self._renew()
                    due = self._due()
                    backoff = 1.0
                if now >= next_status:
                    next_status = now + STATUS_EVERY
            except (IdmintError, OSError, http.client.HTTPException) as exc:
                # The server is away or refused, or the disk is full: say so,
                # retry later. Anything else is a bug: it ends the watch (exit 1).
                wait = min(BACKOFF_MAX, backoff) * random.uniform(0.5, 1.5)
                click.echo(f"renewal failed ({exc}); retrying in {wait:.1f}s", err=True)
                due = time.time() + wait
                backoff *= 2
            time.sleep(max(0.05, min(1.0, due - time.time())))
        click.echo("stopped", err=True)
        sys.exit(0)
