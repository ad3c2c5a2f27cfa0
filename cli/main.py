"""Entry point: the ``idmint`` group, its lazily imported commands and its error handling.

Every :class:`~idmint.errors.IdmintError` becomes one line on stderr naming
the problem and exit status 1; tracebacks are for bugs only.

Start-up is what every command, ``--help``, ``--version`` and every press of
TAB pays, so this module imports click and nothing of the server: each
command group is imported when it is invoked (click's "lazy group"
pattern), ``idmint --help`` lists names and short help from the table
below, and a command whose extra is not installed (``pip install idmint`` is
the light client) answers with the one line that says which to install.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any, NamedTuple

import click

from idmint import __version__
from idmint.errors import IdmintError

#: The modules each extra of setup.cfg brings (import names, not distributions).
EXTRA_MODULES = {
    "server": (
        "pkcs11",
        "josepy",
        "sqlalchemy",
        "alembic",
        "flask",
        "gunicorn",
        "limits",
        "prometheus_client",
        "jwt",
    ),
}


class LazyCommand(NamedTuple):
    """Where a command lives, what ``idmint --help`` says of it and the extra it needs.

    A NamedTuple, not a dataclass: dataclasses imports inspect and ast, which
    click alone does not need.
    """

    target: str  # "module:attribute"
    short_help: str
    extra: str | None = None
    hidden: bool = False


COMMANDS = {
    "init": LazyCommand(
        "idmint.cli.init_command:init",
        "Create a trust domain: HSM token, database, config and root CA.",
        "server",
    ),
    "server": LazyCommand(
        "idmint.cli.server_command:server",
        "Serve the HTTPS API (gunicorn) and the admin socket DIR/server/admin.sock.",
        "server",
    ),
    "server-tls": LazyCommand(
        "idmint.cli.server_command:server_tls",
        "Issue a fresh TLS certificate for the server (used by its renewal).",
        "server",
        hidden=True,
    ),
    "entry": LazyCommand(
        "idmint.cli.entry_commands:entry",
        "Manage registration entries (selectors -> SPIFFE ID).",
        "server",
    ),
    "token": LazyCommand(
        "idmint.cli.token_commands:token", "Create, list and revoke join tokens.", "server"
    ),
    "bundle": LazyCommand("idmint.cli.bundle_commands:bundle", "Show the trust bundle.", "server"),
    "authority": LazyCommand(
        "idmint.cli.authority_commands:authority",
        "List and rotate authorities (every change is audited).",
        "server",
    ),
    "revoke": LazyCommand(
        "idmint.cli.revoke_commands:revoke",
        "Revoke credentials and identities (durable, audited, on every replica).",
        "server",
    ),
    "audit": LazyCommand(
        "idmint.cli.audit_commands:audit", "The audit log: verify it, read it, export it.", "server"
    ),
    "anomaly": LazyCommand(
        "idmint.cli.anomaly_commands:anomaly",
        "Issuance anomaly response: who behaves unlike itself, and what was done.",
        "server",
    ),
    "hsm": LazyCommand("idmint.cli.hsm_commands:hsm", "Inspect the PKCS#11 token.", "server"),
    "svid": LazyCommand(
        "idmint.cli.svid_commands:svid", "Get SVIDs from an idmint server or agent."
    ),
    # list/show/ban need only [server]; running the agent itself names
    # [agent] when gRPC is missing (idmint.cli.agent_commands).
    "agent": LazyCommand(
        "idmint.cli.agent_commands:agent",
        "Run the node agent (SPIFFE Workload API), or manage agents (list, show, ban).",
        "server",
    ),
}


def missing_modules(extra: str | None) -> list[str]:
    """The modules of ``extra`` that cannot be found (looked up, not imported)."""
    if extra is None:
        return []
    return list(_missing(EXTRA_MODULES[extra]))


@functools.cache
def _missing(modules: tuple[str, ...]) -> tuple[str, ...]:
    # Once per process: each lookup walks sys.path, and --help lists ten commands.
    return tuple(name for name in modules if importlib.util.find_spec(name) is None)


def install_hint(command: str, extra: str) -> str:
    return f"'idmint {command}' needs the {extra} extra: pip install 'idmint[{extra}]'"


def _needs_extra(name: str, extra: str) -> click.Command:
    """A stand-in that answers anything (``--help`` too) with the line naming the extra."""

    def refuse() -> None:
        raise click.ClickException(install_hint(name, extra))

    return click.Command(
        name,
        callback=refuse,
        help=install_hint(name, extra),
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


class IdmintGroup(click.Group):
    """Commands imported on first use; idmint errors as clean messages."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        lazy = COMMANDS[cmd_name]
        if lazy.extra and missing_modules(lazy.extra):
            return _needs_extra(cmd_name, lazy.extra)
        module_name, attribute = lazy.target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The table's names and short help, without importing any command."""
        rows = []
        for name in self.list_commands(ctx):
            lazy = COMMANDS.get(name)
            if lazy is None:
                command = self.commands[name]
                if not command.hidden:
                    rows.append((name, command.get_short_help_str(limit=formatter.width)))
            elif not lazy.hidden:
                note = f" [needs idmint[{lazy.extra}]]" if missing_modules(lazy.extra) else ""
                rows.append((name, lazy.short_help + note))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        """Command names from the table: completing ``idmint <TAB>`` imports nothing."""
        from click.shell_completion import CompletionItem

        names = [
            CompletionItem(name, help=lazy.short_help)
            for name, lazy in COMMANDS.items()
            if name.startswith(incomplete) and not lazy.hidden
        ]
        # Options of the group itself (--help, --version) from click.
        return names + click.Command.shell_complete(self, ctx, incomplete)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IdmintError as exc:
            raise click.ClickException(str(exc)) from None
        except ModuleNotFoundError as exc:
            # An extra installed in part: name the extra, not a traceback.
            top = (exc.name or "").partition(".")[0]
            for extra, modules in EXTRA_MODULES.items():
                if top in modules:
                    command = ctx.invoked_subcommand or "this command"
                    raise click.ClickException(
                        f"{install_hint(command, extra)} (module {top!r} is missing)"
                    ) from None
            raise


@click.group(cls=IdmintGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="idmint")
def cli() -> None:
    """idmint: short-lived workload identity (SPIFFE) with CA keys in PKCS#11."""


def main() -> None:
    cli(prog_name="idmint")


if __name__ == "__main__":
    main()
