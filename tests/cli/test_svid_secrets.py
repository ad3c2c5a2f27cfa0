"""``idmint svid``: join tokens from a file or the environment, and --help says why.

That the file really works against a server is in
tests/server/test_getting_started.py (README's first steps use it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from idmint.cli.main import cli


@pytest.mark.parametrize("kind", ["x509", "jwt"])
def test_join_token_help_says_argv_is_visible_and_names_the_safer_options(kind: str) -> None:
    done = CliRunner().invoke(cli, ["svid", kind, "--help"], terminal_width=200)
    assert done.exit_code == 0, done.output
    line = next(x for x in done.output.splitlines() if x.strip().startswith("--join-token TEXT"))
    assert "ps" in line and "--join-token-file" in line and "IDMINT_JOIN_TOKEN" in line
    assert "--join-token-file FILE" in done.output


@pytest.mark.parametrize("kind", ["x509", "jwt"])
def test_a_token_file_and_a_token_together_are_refused(kind: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not read: the usage is checked first\n")
    args = ["svid", kind, "--server", "https://127.0.0.1:1", "--bundle", str(bundle)]
    args += ["--join-token-file", str(token)]
    args += ["--out", str(tmp_path / "out")] if kind == "x509" else ["--audience", "a"]
    done = CliRunner().invoke(cli, args, env={"IDMINT_JOIN_TOKEN": "def"})
    assert done.exit_code == 2, done.output
    assert "give exactly one of --join-token-file, --join-token" in done.output


def test_an_empty_token_file_is_named(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not read\n")
    args = ["svid", "jwt", "--server", "https://127.0.0.1:1", "--bundle", str(bundle)]
    args += ["--join-token-file", str(token), "--audience", "a"]
    done = CliRunner().invoke(cli, args, env={"IDMINT_JOIN_TOKEN": None})
    assert done.exit_code == 2, done.output
    assert f"{token} is empty" in done.output
