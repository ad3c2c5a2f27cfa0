"""Run the real ``idmint`` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

Runner = Callable[..., subprocess.CompletedProcess[str]]


def _command() -> list[str]:
    script = Path(sys.executable).parent / "idmint"
    return [str(script)] if script.exists() else [sys.executable, "-m", "idmint.cli.main"]


def run_idmint(
    *args: str, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``idmint *args`` in a subprocess, without inherited idmint or SoftHSM settings.

    ``env`` adds variables; a value of None removes one.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IDMINT_")}
    environment.pop("SOFTHSM2_CONF", None)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return subprocess.run(
        [*_command(), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


@pytest.fixture
def idmint() -> Runner:
    """``idmint(*args, env={...})`` -> CompletedProcess with text output."""
    return run_idmint
