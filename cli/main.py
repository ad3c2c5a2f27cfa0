"""Entry point: the ``idmint`` group and its error handling.

Every :class:`~idmint.errors.IdmintError` becomes one line on stderr naming
the problem and exit status 1; tracebacks are for bugs only.
"""

from __future__ import annotations

from typing import Any

import click

from idmint import __version__
from idmint.cli.agent_commands import agent
from idmint.cli.audit_commands import audit
from idmint.cli.authority_commands import authority
from idmint.cli.bundle_commands import bundle
from idmint.cli.entry_commands import entry
from idmint.cli.hsm_commands import hsm
from idmint.cli.init_command import init
from idmint.cli.revoke_commands import revoke
from idmint.cli.server_command import server, server_tls
from idmint.cli.svid_commands import svid
from idmint.cli.token_commands import token
from idmint.errors import IdmintError


class IdmintGroup(click.Group):
    """A group that turns idmint errors into clean messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IdmintError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=IdmintGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="idmint")
def cli() -> None:
    """idmint: short-lived workload identity (SPIFFE) with CA keys in PKCS#11."""


cli.add_command(init)
cli.add_command(bundle)
cli.add_command(entry)
cli.add_command(audit)
cli.add_command(server)
cli.add_command(server_tls)
cli.add_command(token)
cli.add_command(svid)
cli.add_command(revoke)
cli.add_command(authority)
cli.add_command(hsm)
cli.add_command(agent)


def main() -> None:
    cli(prog_name="idmint")


if __name__ == "__main__":
    main()
