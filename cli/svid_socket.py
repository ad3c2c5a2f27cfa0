"""``idmint svid x509 --socket PATH --out DIR [--watch --exec CMD]``: files from the agent.

What spiffe-helper does for servers that read certificates from files
(nginx, Envoy's file SDS): the SVID the local agent gives this process is
written to ``svid.pem``, ``svid.key`` (0600) and ``bundle.pem``, atomically,
key first; with ``--watch`` again on every update the agent pushes, then
``--exec`` runs or ``--signal-pid`` is signalled.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import click

from idmint.cli.output import emit_json
from idmint.client import write_atomic


def from_socket(
    socket_path: str,
    spiffe_id: str | None,
    directory: Path,
    watch: bool,
    run: str | None,
    signal_pid: int | None,
    signal_name: str,
    output: str,
) -> None:
    try:
        from idmint.agent.workload_client import x509_updates
    except ImportError as missing:
        raise click.ClickException(
            f"--socket needs the [agent] extra: pip install 'idmint[agent]' ({missing})"
        ) from None
    number = signal.Signals[signal_name if signal_name.startswith("SIG") else f"SIG{signal_name}"]
    first = True
    for update in x509_updates(socket_path, spiffe_id, follow=watch):
        directory.mkdir(parents=True, exist_ok=True)
        # Key first: a reader that sees the new certificate finds its key already there.
        write_atomic(directory / "svid.key", update.key_pem, 0o600)
        write_atomic(directory / "svid.pem", update.chain_pem.encode())
        write_atomic(directory / "bundle.pem", update.bundle_pem.encode())
        if first and output == "json":
            emit_json({"spiffe_id": update.spiffe_id, "out": str(directory)})
        elif first:
            click.echo(f"{update.spiffe_id} -> {directory}")
        else:
            click.echo(f"updated {update.spiffe_id}", err=True)
            if run:
                done = subprocess.run(shlex.split(run), check=False)
                if done.returncode:
                    click.echo(f"--exec exited {done.returncode}", err=True)
            if signal_pid:
                try:
                    os.kill(signal_pid, number)
                except ProcessLookupError:
                    click.echo(f"process {signal_pid} is gone; not signalled", err=True)
        first = False
