"""``idmint``'s lazily imported commands: help, completion and missing extras.

Start-up time itself is measured in benchmarks/cli_start.py, not here; these
tests check what makes it short (nothing of the server imported) and that
the table ``idmint --help`` reads says what the commands say.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from idmint.cli import choices, main
from idmint.cli.main import COMMANDS, EXTRA_MODULES, cli
from tests.cli.conftest import Runner

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("idmint.ca", "idmint.hsm", "idmint.attestation", "sqlalchemy", "pkcs11", "flask")
#: Light (the error tree only): the admin client's error derives from the CA's.
ALLOWED = {"idmint.ca", "idmint.ca.errors"}


def _imported_after(code: str) -> list[str]:
    """Modules of the server side (and cryptography) loaded by ``code`` in a fresh Python."""
    probe = (
        "import sys, json\n"
        f"{code}\n"
        "names = sorted(m for m in sys.modules if m.startswith("
        f"{(*SERVER_SIDE, 'cryptography')!r}))\n"
        "print(json.dumps(names), file=sys.__stderr__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    loaded: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return [m for m in loaded if m not in ALLOWED]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_says_what_each_command_says(name: str) -> None:
    lazy = COMMANDS[name]
    module, attribute = lazy.target.split(":")
    command = getattr(__import__(module, fromlist=[attribute]), attribute)
    assert command.name == name
    assert command.hidden == lazy.hidden
    first_line = (command.help or "").strip().splitlines()[0]
    assert first_line == lazy.short_help


@pytest.mark.parametrize("arguments", [["--help"], ["--version"], ["svid", "--help"]])
def test_help_and_version_import_nothing_of_the_server(arguments: list[str]) -> None:
    loaded = _imported_after(
        "from idmint.cli.main import cli\n"
        f"try:\n    cli({arguments!r}, prog_name='idmint')\n"
        "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
    )
    if arguments[0] == "svid":
        loaded = [m for m in loaded if not m.startswith("cryptography")]
    assert loaded == []


def test_completion_of_commands_and_subcommands_imports_nothing_of_the_server() -> None:
    for words in (
        "idmint en",
        "idmint entry cr",
        "idmint authority prepare ",
        "idmint svid x509 --",
    ):
        loaded = _imported_after(
            "import os\n"
            "os.environ.update(_IDMINT_COMPLETE='bash_complete', "
            f"COMP_WORDS={words!r}, COMP_CWORD=str({len(words.split(' ')) - 1}))\n"
            "from idmint.cli.main import cli\n"
            "try:\n    cli(prog_name='idmint')\n"
            "except SystemExit:\n    pass\n"
        )
        assert loaded == [], words


def test_completion_through_the_real_command(idmint: Runner) -> None:
    def complete(words: str) -> list[str]:
        done = idmint(
            env={
                "_IDMINT_COMPLETE": "bash_complete",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split(" ")) - 1),
            }
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("idmint en") == ["plain,entry"]
    assert "server-tls" not in " ".join(complete("idmint s"))
    assert complete("idmint entry cr") == ["plain,create"]
    assert complete("idmint authority prepare ") == [
        "plain,root",
        "plain,intermediate",
        "plain,jwt",
        "plain,audit",
    ]
    source = idmint(env={"_IDMINT_COMPLETE": "bash_source"})
    assert source.returncode == 0 and "complete -o nosort -F" in source.stdout


def test_a_missing_extra_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # A module that cannot be found stands for an extra that is not installed.
    monkeypatch.setitem(EXTRA_MODULES, "server", ("idmint_test_no_such_module",))
    monkeypatch.setattr(cli, "commands", {})  # forget commands other tests loaded
    runner = CliRunner()
    for arguments in (["server", "--help"], ["entry", "list"], ["init", "--trust-domain", "t"]):
        done = runner.invoke(cli, arguments)
        assert done.exit_code == 1, done.output
        assert done.output.strip().splitlines() == [
            f"Error: 'idmint {arguments[0]}' needs the server extra: pip install 'idmint[server]'"
        ]
    listing = runner.invoke(cli, ["--help"])
    assert listing.exit_code == 0
    assert "needs idmint[server]" in listing.output
    assert re.search(r"svid\s+Get SVIDs from an idmint server or agent\.\n", listing.output)
    assert runner.invoke(cli, ["svid", "x509", "--help"]).exit_code == 0


def test_a_module_missing_at_run_time_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command("probe")
    def probe() -> None:
        raise ModuleNotFoundError("No module named 'sqlalchemy'", name="sqlalchemy")

    monkeypatch.setitem(cli.commands, "probe", probe)
    done = CliRunner().invoke(cli, ["probe"])
    assert done.exit_code == 1
    assert "pip install 'idmint[server]'" in done.output and "'sqlalchemy'" in done.output


def test_extra_modules_match_setup_cfg() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    wanted = {
        re.split(r"[\[<>=,]", line.strip())[0].lower().replace("_", "-")
        for line in config["options.extras_require"]["server"].splitlines()
        if line.strip()
    }
    providers = importlib.metadata.packages_distributions()
    provided = {
        distribution.lower().replace("_", "-")
        for module in EXTRA_MODULES["server"]
        for distribution in providers.get(module, [])
    }
    assert provided == wanted


def test_choices_equal_what_they_copy() -> None:
    from idmint.ca.revocation.revocations import REASONS
    from idmint.ca.storage.models import AuthorityKind
    from idmint.hsm import KeyType

    assert choices.KEY_TYPES == tuple(k.value for k in KeyType)
    assert choices.DEFAULT_KEY_TYPE == KeyType.EC_P256.value
    assert choices.AUTHORITY_KINDS == tuple(k.value for k in AuthorityKind)
    assert choices.REVOCATION_REASONS == tuple(sorted(REASONS))


def test_main_module_imports_only_click_and_the_error_root() -> None:
    assert _imported_after("import idmint.cli.main") == []
    assert main.missing_modules("server") == []
