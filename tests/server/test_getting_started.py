"""Getting started as a new user would: README's first steps and scripts/demo.sh's hint.

Both are run as written (only the paths and the port are this test's), in a
shell without $USER, against a real server, so a step that does not work,
or that needs something a fresh shell lacks, fails here.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server.conftest import clean_env, init_data_dir

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
TRUST_DOMAIN = "demo.idmint.test"
SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/demo"
USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _shell_env() -> dict[str, str]:
    # A root shell or a container often has no $USER: the steps must not need it.
    env = clean_env()
    for name in USER_VARIABLES:
        env.pop(name, None)
    return env


def _wait_ready(port: int, bundle: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(bundle)) if bundle.exists() else None
    deadline = time.monotonic() + 90
    while True:
        if context is None and bundle.exists():
            context = ssl.create_default_context(cafile=str(bundle))
        if context is not None:
            try:
                url = f"https://127.0.0.1:{port}/readyz"
                with urllib.request.urlopen(url, context=context, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass  # not listening yet
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("idmint did not start:\n" + log.read_text(errors="replace"))
        time.sleep(0.3)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Demo:
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``idmint server`` on a port given only by IDMINT_LISTEN."""
    base = tmp_path_factory.mktemp("getting-started")
    data = init_data_dir(base / "demo-data", trust_domain=TRUST_DOMAIN)
    port = _free_port()
    log = base / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / "idmint"), "server", "--data-dir", str(data), "--workers", "1"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_env(IDMINT_LISTEN=f"127.0.0.1:{port}"),
        )
    try:
        _wait_ready(port, data / "server" / "bundle.pem", process, log)
        yield Demo(data, port, process)
    finally:
        _stop(process)


def _jwt_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


def _check_steps_ran(done: subprocess.CompletedProcess[str], cwd: Path, data: Path) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"URI:{SPIFFE_ID}" in done.stdout
    claims = _jwt_claims(done.stdout.strip().splitlines()[-1])
    assert claims["sub"] == SPIFFE_ID and claims["aud"] in ("demo", ["demo"])
    assert stat.S_IMODE((cwd / "demo-token").stat().st_mode) == 0o600
    listed = subprocess.run(
        [str(BIN / "idmint"), "entry", "list", "--data-dir", str(data), "--output", "json"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    )
    owners = {e["owner"] for e in json.loads(listed.stdout) if e["spiffe_id"] == SPIFFE_ID}
    assert owners == {pwd.getpwuid(os.getuid()).pw_name}


def test_the_server_takes_its_address_from_idmint_listen(demo: Demo) -> None:
    # The fixture reached /readyz on the port named only by IDMINT_LISTEN.
    assert "--listen" not in demo.process.args  # type: ignore[operator]
    assert demo.process.poll() is None


def test_readme_first_steps_run_as_written(demo: Demo, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## What works today") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    steps = block.group(1)
    assert "svid jwt" in steps and "--join-token-file" in steps and "$USER" not in steps
    steps = (
        steps.replace(".venv/bin/idmint", str(BIN / "idmint"))
        .replace("demo-data", str(demo.data_dir))
        .replace("127.0.0.1:8443", f"127.0.0.1:{demo.port}")
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", steps],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_shell_env(),
        timeout=120,
        check=False,
    )
    _check_steps_ran(done, tmp_path, demo.data_dir)


@pytest.mark.slow  # scripts/bootstrap.sh, then a second server
@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="scripts/demo.sh runs the checkout's .venv; these tests run another interpreter",
)
def test_demo_script_prints_steps_that_work(tmp_path: Path) -> None:
    data = tmp_path / "demo-data"
    port = _free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(ROOT / "scripts" / "demo.sh")],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_env(IDMINT_DATA_DIR=str(data), IDMINT_LISTEN=f"127.0.0.1:{port}"),
        )
    try:
        _wait_ready(port, data / "server" / "bundle.pem", process, log)
        printed = log.read_text()
        hint = printed[printed.index("from another terminal") :].split("\n\n")[1]
        assert "svid jwt" in hint and "$USER" not in hint and f"127.0.0.1:{port}" in hint
        work = tmp_path / "elsewhere"
        work.mkdir()
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", hint],
            cwd=work,
            capture_output=True,
            text=True,
            env=_shell_env(),
            timeout=120,
            check=False,
        )
        _check_steps_ran(done, work, data)
    finally:
        _stop(process)
