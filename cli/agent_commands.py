"""``idmint agent``: run the node agent, or list, show and ban agents.

``idmint agent --server URL --bundle FILE --join-token-file F [--socket P]``
runs the agent (the ``[agent]`` extra); ``idmint agent list|show|ban`` are
operator commands on the CA's data directory (through the running server's
admin socket when there is one).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from idmint.ca.config import resolve_data_dir
from idmint.cli import admin_client
from idmint.cli.context import data_directory
from idmint.cli.options import cli_actor, data_dir_option
from idmint.cli.output import emit_fields, emit_json, output_option

DEFAULT_SOCKET = "/run/idmint/agent.sock"


def _evidence(
    join_token_file: str | None,
    oidc_token_file: str | None,
    k8s_token_file: str | None,
    x509pop: tuple[str | None, str | None] = (None, None),
) -> Any:
    """A callable giving node evidence: a join token once; token files and x509pop every time."""
    # From the environment, never only argv (ps shows argv to every user).
    env_token = os.environ.pop("IDMINT_JOIN_TOKEN", None)
    cert_file, key_file = x509pop
    if bool(cert_file) != bool(key_file):
        raise click.UsageError("x509pop needs both --x509pop-cert and --x509pop-key")
    given = [
        v for v in (join_token_file, oidc_token_file, k8s_token_file, env_token, cert_file) if v
    ]
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --join-token-file (or IDMINT_JOIN_TOKEN), "
            "--oidc-token-file, --k8s-token-file, --x509pop-cert/--x509pop-key"
        )
    if join_token_file or env_token:
        token = env_token or Path(str(join_token_file)).read_text(encoding="utf-8").strip()
        left = [token]

        def join_token(_client: Any) -> dict[str, Any] | None:
            return {"type": "join_token", "token": left.pop()} if left else None

        return join_token
    if cert_file and key_file:
        return _x509pop(Path(cert_file), Path(key_file))
    path = Path(str(oidc_token_file or k8s_token_file))
    kind = "oidc" if oidc_token_file else "k8s_psat"

    def token_file(_client: Any) -> dict[str, Any] | None:
        # Re-read each time: the platform rotates these files.
        return {"type": kind, "token": path.read_text(encoding="utf-8").strip()}

    return token_file


def _x509pop(cert_file: Path, key_file: Path) -> Any:
    """Proof of possession of a bootstrap certificate, over a fresh server nonce each time."""
    import base64

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from idmint.attestation.x509pop import sign_nonce

    chain = cert_file.read_text(encoding="ascii")
    try:
        key = load_pem_private_key(key_file.read_bytes(), None)
    except (ValueError, TypeError) as error:
        raise click.BadParameter(
            f"{key_file} is not an unencrypted PEM private key ({error})",
            param_hint="--x509pop-key",
        ) from None

    def proof(client: Any) -> dict[str, Any] | None:
        nonce = client.nonce()
        signature = base64.b64encode(sign_nonce(key, nonce)).decode("ascii")
        return {"type": "x509pop", "nonce": nonce, "chain": chain, "signature": signature}

    return proof


def _listen(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint="--health-listen")
    return host, int(port)


@click.group(invoke_without_command=True)
@click.option("--server", envvar="IDMINT_SERVER", help="https://HOST:PORT of the idmint server.")
@click.option(
    "--bundle",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM bundle to trust for the server.",
)
@click.option(
    "--join-token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Node join token (idmint token create --agent); or IDMINT_JOIN_TOKEN.",
)
@click.option("--oidc-token-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--k8s-token-file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--x509pop-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="Node certificate (PEM chain) from a bootstrap CA the server trusts.",
)
@click.option(
    "--x509pop-key",
    type=click.Path(exists=True, dir_okay=False),
    help="Its private key (PEM, unencrypted; keep it 0600).",
)
@click.option(
    "--socket",
    "socket_path",
    default=DEFAULT_SOCKET,
    show_default=True,
    help="Workload API socket (SPIFFE_ENDPOINT_SOCKET=unix://PATH).",
)
@click.option("--sync-interval", type=float, default=1.0, show_default=True, help="Seconds.")
@click.option("--unix-path", is_flag=True, help="Add unix:path selectors (the executable).")
@click.option("--unix-sha256", is_flag=True, help="Add unix:sha256 selectors (hash of it).")
@click.option("--health-listen", help="HOST:PORT for /healthz and /metrics.")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def agent(
    ctx: click.Context,
    server: str | None,
    bundle: str | None,
    join_token_file: str | None,
    oidc_token_file: str | None,
    k8s_token_file: str | None,
    x509pop_cert: str | None,
    x509pop_key: str | None,
    socket_path: str,
    sync_interval: float,
    unix_path: bool,
    unix_sha256: bool,
    health_listen: str | None,
    log_level: str,
) -> None:
    """Run the node agent (SPIFFE Workload API), or manage agents (list, show, ban)."""
    if ctx.invoked_subcommand is not None:
        return
    if not server or not bundle:
        raise click.UsageError("the agent needs --server and --bundle")
    evidence = _evidence(
        join_token_file, oidc_token_file, k8s_token_file, (x509pop_cert, x509pop_key)
    )
    try:
        from idmint.agent.runner import Agent, AgentOptions
    except ImportError as missing:
        raise click.ClickException(
            f"the agent needs the [agent] extra: pip install 'idmint[agent]' ({missing})"
        ) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    options = AgentOptions(
        server=server,
        bundle=bundle,
        socket=Path(socket_path),
        sync_interval=sync_interval,
        unix_path=unix_path,
        unix_sha256=unix_sha256,
        health_listen=_listen(health_listen),
    )
    Agent(options, evidence).run_until_signalled()


def _show(data: dict[str, Any], output: str) -> None:
    if output == "json":
        emit_json(data)
        return
    emit_fields(
        [
            ("SPIFFE ID", data["spiffe_id"]),
            ("Attestation", data["attestation_type"]),
            ("Selectors", ", ".join(data["selectors"]) or "-"),
            ("Entry", data["entry_id"]),
            ("Anomaly baseline", f"agent:{data['entry_id']} (idmint anomaly show)"),
            ("SVID serial", data["serial"] or "-"),
            ("SVID expires", data["svid_expires_at"] or "-"),
            ("Attested", data["attested_at"]),
            ("Last seen", data["seen_at"]),
            ("Banned", data["banned_at"] if data["banned"] else "no"),
        ]
    )


def _registry(config: Any, database: Any) -> Any:
    from idmint.ca.issuance.agents import AgentRegistry
    from idmint.ca.spiffe_id import TrustDomain

    return AgentRegistry(database, TrustDomain(config.trust_domain))


@agent.command("list")
@data_dir_option
@output_option
def list_(data_dir: str | None, output: str) -> None:
    """List the agents that attested."""
    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        found = admin_client.call(directory, "GET", "/v1/agents")
    else:
        with data_directory(data_dir) as (config, database):
            found = [a.to_json() for a in _registry(config, database).list()]
    if output == "json":
        emit_json(found)
        return
    for row in found:
        state = "banned" if row["banned"] else "active"
        click.echo(f"{row['spiffe_id']}  {row['attestation_type']}  {state}  seen {row['seen_at']}")


@agent.command("show")
@data_dir_option
@click.argument("spiffe_id")
@output_option
def show(data_dir: str | None, spiffe_id: str, output: str) -> None:
    """Show one agent."""
    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        found = admin_client.call(directory, "GET", f"/v1/agents?spiffe_id={quote(spiffe_id)}")
    else:
        with data_directory(data_dir) as (config, database):
            found = _registry(config, database).get(spiffe_id).to_json()
    _show(found, output)


@agent.command("ban")
@data_dir_option
@click.argument("spiffe_id")
@output_option
def ban(data_dir: str | None, spiffe_id: str, output: str) -> None:
    """Ban an agent: it and its workloads get nothing more."""
    directory = resolve_data_dir(data_dir)
    if admin_client.available(directory):
        found = admin_client.call(directory, "POST", "/v1/agents/ban", {"spiffe_id": spiffe_id})
    else:
        with data_directory(data_dir) as (config, database):
            found = _registry(config, database).ban(spiffe_id, cli_actor()).to_json()
    if output == "json":
        emit_json(found)
    else:
        click.echo(f"Banned agent {spiffe_id}")
