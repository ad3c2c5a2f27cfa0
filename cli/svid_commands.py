"""``idmint svid``: a workload or pipeline gets its SVID from a server.

The key is generated here and never leaves this machine; files are written
atomically (a temporary file renamed into place), the key with mode 0600.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from idmint.cli.output import emit_json, output_option


def _evidence(
    join_token: str | None,
    join_token_file: str | None,
    oidc_token_file: str | None,
    k8s_token_file: str | None,
) -> dict[str, Any]:
    given = [v for v in (join_token, join_token_file, oidc_token_file, k8s_token_file) if v]
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --join-token-file, --join-token (or IDMINT_JOIN_TOKEN), "
            "--oidc-token-file, --k8s-token-file"
        )
    if join_token_file:
        join_token = Path(join_token_file).read_text(encoding="utf-8").strip()
        if not join_token:
            raise click.BadParameter(
                f"{join_token_file} is empty", param_hint="'--join-token-file'"
            )
    if join_token:
        return {"type": "join_token", "token": join_token}
    path = oidc_token_file or k8s_token_file
    assert path is not None
    token = Path(path).read_text(encoding="utf-8").strip()
    return {"type": "oidc" if oidc_token_file else "k8s_psat", "token": token}


# argv is readable by every local user (ps, /proc/PID/cmdline) for the
# whole life of the process, which with --watch is as long as the workload.
JOIN_TOKEN_HELP = (
    "One-time join token. Avoid: argv is visible to other users (ps) while this runs; "
    "prefer --join-token-file or IDMINT_JOIN_TOKEN."
)

evidence_options = [
    # Not required by click: with --socket (the local agent) neither is needed.
    click.option("--server", envvar="IDMINT_SERVER", help="https://HOST:PORT"),
    click.option(
        "--bundle",
        type=click.Path(exists=True, dir_okay=False),
        help="PEM bundle to trust for the server.",
    ),
    click.option("--join-token", envvar="IDMINT_JOIN_TOKEN", help=JOIN_TOKEN_HELP),
    click.option(
        "--join-token-file",
        type=click.Path(exists=True, dir_okay=False),
        help="File holding the one-time join token (keep it 0600).",
    ),
    click.option("--oidc-token-file", type=click.Path(exists=True, dir_okay=False)),
    click.option("--k8s-token-file", type=click.Path(exists=True, dir_okay=False)),
    click.option("--spiffe-id", help="Which SPIFFE ID, when several entries match."),
]


def _with_evidence(function: Any) -> Any:
    for option in reversed(evidence_options):
        function = option(function)
    return function


@click.group()
def svid() -> None:
    """Get SVIDs from an idmint server or agent."""


@svid.command("x509")
@_with_evidence
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Directory to write to."
)
@click.option("--watch", is_flag=True, help="Keep renewing (about half-way through each SVID).")
@click.option("--exec", "run", help="Command to run after each renewal (e.g. 'nginx -s reload').")
@click.option("--signal-pid", type=int, help="Process to signal after each renewal.")
@click.option("--signal", "signal_name", default="SIGHUP", show_default=True)
@click.option(
    "--renew-at",
    type=click.FloatRange(0.01, 0.9),
    default=0.5,
    show_default=True,
    help="Fraction of the lifetime after which to renew.",
)
@click.option(
    "--socket",
    "socket_path",
    help="Get it from the local agent's Workload API instead (no evidence needed).",
)
@output_option
def x509_command(
    server: str | None,
    bundle: str | None,
    join_token: str | None,
    join_token_file: str | None,
    oidc_token_file: str | None,
    k8s_token_file: str | None,
    spiffe_id: str | None,
    out: str,
    watch: bool,
    run: str | None,
    signal_pid: int | None,
    signal_name: str,
    renew_at: float,
    socket_path: str | None,
    output: str,
) -> None:
    """Write svid.pem, svid.key (0600) and bundle.pem to --out; --watch keeps them fresh."""
    if socket_path:
        from idmint.cli.svid_socket import from_socket

        from_socket(socket_path, spiffe_id, Path(out), watch, run, signal_pid, signal_name, output)
        return
    if not server or not bundle:
        raise click.UsageError("give --server and --bundle (or --socket for the local agent)")
    from idmint.client import Server, write_svid_files

    # The usage is checked before anything is read or sent.
    evidence = _evidence(join_token, join_token_file, oidc_token_file, k8s_token_file)
    api = Server(server, bundle)
    issued = api.fetch_x509(evidence, spiffe_id)
    directory = Path(out)
    write_svid_files(directory, issued)
    answer = issued.response
    summary = {k: answer[k] for k in ("spiffe_id", "serial", "expires_at")}
    if output == "json":
        emit_json({**summary, "out": str(directory)})
    else:
        click.echo(f"{answer['spiffe_id']} until {answer['expires_at']} -> {directory}")
    if watch:
        from idmint.cli.watch import Watcher

        Watcher(api, directory, issued, renew_at, run, signal_pid, signal_name).run()


@svid.command("jwt")
@click.option("--server", required=True, envvar="IDMINT_SERVER", help="https://HOST:PORT")
@click.option(
    "--bundle",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM bundle to trust for the server.",
)
@click.option("--join-token", envvar="IDMINT_JOIN_TOKEN", help=JOIN_TOKEN_HELP)
@click.option(
    "--join-token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="File holding the one-time join token (keep it 0600).",
)
@click.option("--oidc-token-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--k8s-token-file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--svid",
    "svid_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Prove a current X509-SVID (svid.pem, svid.key) instead of attesting.",
)
@click.option(
    "--ci",
    type=click.Choice(["github", "gitlab"]),
    help="Fetch this CI job's own OIDC token and exchange it.",
)
@click.option(
    "--ci-audience",
    default="idmint",
    show_default=True,
    help="Audience to ask the CI platform for (must match the server's config).",
)
@click.option(
    "--ci-token-variable",
    default="IDMINT_ID_TOKEN",
    show_default=True,
    help="GitLab: the id_tokens variable holding the token.",
)
@click.option("--spiffe-id", help="Which SPIFFE ID, when several entries match.")
@click.option("--audience", "audiences", multiple=True, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["token", "env", "json"]),
    default="token",
    show_default=True,
    help="env: NAME=token, for $GITHUB_ENV.",
)
@click.option("--env-name", default="IDMINT_JWT_SVID", show_default=True)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    help="Append/write to this file instead of stdout (e.g. $GITHUB_ENV).",
)
@output_option
def jwt_command(
    server: str,
    bundle: str,
    join_token: str | None,
    join_token_file: str | None,
    oidc_token_file: str | None,
    k8s_token_file: str | None,
    svid_dir: str | None,
    ci: str | None,
    ci_audience: str,
    ci_token_variable: str,
    spiffe_id: str | None,
    audiences: tuple[str, ...],
    fmt: str,
    env_name: str,
    out_file: str | None,
    output: str,
) -> None:
    """Get a JWT-SVID for --audience (prints the token, or writes it for the next CI step)."""
    from idmint.client import Server

    body: dict[str, Any] = {"audience": list(audiences)}
    if svid_dir:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from idmint.pop import jwt_payload, make_proof

        chain = (Path(svid_dir) / "svid.pem").read_text()
        key = load_pem_private_key((Path(svid_dir) / "svid.key").read_bytes(), None)
        body["proof"] = make_proof(chain, key, "jwt-svid", jwt_payload(audiences))
    elif ci:
        from idmint.cli.ci_tokens import github_token, gitlab_token

        token = github_token(ci_audience) if ci == "github" else gitlab_token(ci_token_variable)
        body["attestation"] = {"type": "oidc", "token": token}
    else:
        body["attestation"] = _evidence(
            join_token, join_token_file, oidc_token_file, k8s_token_file
        )
    if spiffe_id:
        body["spiffe_id"] = spiffe_id
    issued = Server(server, bundle).post("/v1/svid/jwt", body)
    if output == "json" or fmt == "json":
        text = json.dumps(issued)
    elif fmt == "env":
        text = f"{env_name}={issued['token']}"
    else:
        text = issued["token"]
    if out_file:
        descriptor = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    else:
        click.echo(text)
