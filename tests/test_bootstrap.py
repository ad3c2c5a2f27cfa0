"""scripts/bootstrap.sh runs pip only when what it would install changed.

The script runs for real on a copy of the checkout's packaging files; the
venv's python is a stand-in that records its arguments, because a real
``pip install -e`` takes a minute and is not what is under test: whether the
script calls it is. That the real install works on a fresh machine is what
CI's clean clone (scripts/test.sh) shows every run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("softhsm2", "opensc", "openssl")
FOR_TESTS = ("postgresql", "redis-server", "nginx-light", "curl")

STAND_IN = """#!/bin/sh
# pip stand-in: record the call; fail while FAIL exists; install the console script.
echo "$*" >> "$(dirname "$0")/../calls"
[ -e "$(dirname "$0")/../FAIL" ] && exit 1
case "$*" in *" -e "*) printf '#!/bin/sh\\n' > "$(dirname "$0")/idmint"
    chmod +x "$(dirname "$0")/idmint";; esac
exit 0
"""


def _installed(*packages: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    for package in packages:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if "install ok installed" not in done.stdout:
            return False
    return True


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    if not _installed(*RUNTIME):
        pytest.skip("bootstrap.sh would apt-get install " + ", ".join(RUNTIME))
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts")
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(STAND_IN)
    (venv / "python").chmod(0o755)
    return tmp_path


def _bootstrap(checkout: Path, *args: str) -> list[str]:
    """Run the script; the pip calls it made."""
    calls = checkout / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", str(checkout / "scripts" / "bootstrap.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    made = calls.read_text().splitlines() if calls.exists() else []
    if done.returncode != 0:
        raise AssertionError(f"bootstrap.sh exited {done.returncode}: {done.stderr}")
    return made


def test_pip_runs_once_then_only_when_packaging_changes(checkout: Path) -> None:
    first = _bootstrap(checkout)
    assert any("-e .[server]" in call for call in first), first
    assert _bootstrap(checkout) == []

    with (checkout / "setup.cfg").open("a") as setup:
        setup.write("\n# a new dependency, say\n")
    assert any("-e .[server]" in call for call in _bootstrap(checkout))
    assert _bootstrap(checkout) == []

    (checkout / "pyproject.toml").write_text(
        (checkout / "pyproject.toml").read_text() + "\n# changed\n"
    )
    assert any("-e .[server]" in call for call in _bootstrap(checkout))


def test_a_failed_install_is_retried_next_time(checkout: Path) -> None:
    (checkout / ".venv" / "FAIL").touch()
    with pytest.raises(AssertionError, match="installing the Python package failed"):
        _bootstrap(checkout)
    (checkout / ".venv" / "FAIL").unlink()
    assert any("-e .[server]" in call for call in _bootstrap(checkout))
    assert _bootstrap(checkout) == []


def test_a_deleted_console_script_is_reinstalled(checkout: Path) -> None:
    _bootstrap(checkout)
    (checkout / ".venv" / "bin" / "idmint").unlink()
    assert any("-e .[server]" in call for call in _bootstrap(checkout))


def test_the_test_extras_are_installed_when_asked_and_cover_the_demo(checkout: Path) -> None:
    if not _installed(*RUNTIME, *FOR_TESTS):
        pytest.skip("bootstrap.sh --test would apt-get install " + ", ".join(FOR_TESTS))
    assert any("-e .[server]" in call for call in _bootstrap(checkout))
    assert any("-e .[test,postgres,redis]" in call for call in _bootstrap(checkout, "--test"))
    assert _bootstrap(checkout, "--test") == []
    assert _bootstrap(checkout) == []
