"""A real idmint server and real ``idmint agent`` processes for the agent tests.

The server is ``idmint server`` (gunicorn, HTTPS on loopback) on a fresh
data directory; each agent is an ``idmint agent`` subprocess attested with a
node join token, serving the Workload API on a Unix socket in a directory
every local user can reach (the tests run workloads under other uids).
Clients are py-spiffe, in this process or in children under another uid;
never idmint's own generated stubs (agent/proto/README.md says why).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import (
    Server,
    _free_port,
    _idmint,
    clean_env,
    init_data_dir,
    start_server,
    stop_server,
)

TRUST_DOMAIN = "example.org"
OTHER_UID = 1000


@dataclass
class AgentProcess:
    """A running ``idmint agent``."""

    spiffe_id: str
    socket: Path
    health_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def health(self) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=5)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def wait_ready(self, svids: int = 0, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, body = self.health()
                if status == 200 and body["svids"] >= svids:
                    return body
            except OSError:
                pass  # not listening yet
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("idmint agent did not get ready:\n" + self.log.read_text())
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def shared_dir() -> Path:
    """A directory any local user may enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="idmint-agent-test-"))
    os.chmod(path, 0o755)
    return path


def agent_token(server: Server) -> dict[str, Any]:
    made: dict[str, Any] = server.admin("POST", "/v1/agent-tokens", {"ttl_seconds": 600})
    return made


def start_agent(
    server: Server, directory: Path, name: str = "agent", token: dict[str, Any] | None = None
) -> AgentProcess:
    """``idmint agent`` with a fresh node join token (given in the environment)."""
    token = token or agent_token(server)
    socket_path = directory / f"{name}.sock"
    port = _free_port()
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *_idmint(),
                "agent",
                "--server",
                server.url,
                "--bundle",
                server.bundle_file,
                "--socket",
                str(socket_path),
                "--health-listen",
                f"127.0.0.1:{port}",
                "--sync-interval",
                "0.5",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(IDMINT_JOIN_TOKEN=token["token"]),
        )
    running = AgentProcess(str(token["spiffe_id"]), socket_path, port, process, log_path)
    try:
        running.wait_ready()
    except BaseException:
        running.stop()
        raise
    return running


def python_for_others() -> tuple[str, str]:
    """An interpreter other users may run, and the PYTHONPATH giving it our packages.

    The venv's python often links into root's home (0700): a child under
    another uid could not start it. The system python of the same version
    can load the venv's site-packages (same ABI).
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.path.exists(candidate):
            return candidate, sysconfig.get_paths()["purelib"]
    pytest.skip(f"no {version} outside the venv for a child under another uid")


def run_as(uid: int, code: str, socket: Path, timeout: float = 60) -> dict[str, Any]:
    """Run py-spiffe ``code`` in a child under ``uid``; it prints one JSON object."""
    python, site = python_for_others()
    done = subprocess.run(
        # -S: no system site-packages (their versions would shadow ours).
        [python, "-S", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        user=uid,
        group=uid,
        extra_groups=[],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin"),
            "SPIFFE_ENDPOINT_SOCKET": f"unix://{socket}",
            "HOME": "/tmp",
            "PYTHONPATH": site,
        },
        cwd="/",
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("agent-server")
    data = init_data_dir(base / "data", TRUST_DOMAIN)
    running = start_server(data, base, workers=2)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def directory() -> Iterator[Path]:
    path = shared_dir()
    yield path
    if not os.environ.get("IDMINT_KEEP_TEST_DIRS"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(server: Server, directory: Path) -> Iterator[AgentProcess]:
    running = start_agent(server, directory)
    yield running
    running.stop()


def parented_entry(
    server: Server, agent_id: str, path: str, selectors: list[str], **extra: Any
) -> dict[str, Any]:
    return server.entry(f"spiffe://{TRUST_DOMAIN}/{path}", selectors, parent_id=agent_id, **extra)


def restart_server(server: Server, log: Path) -> None:
    """Start ``idmint server`` again on the same data directory and port."""
    with log.open("ab") as output:
        server.process = subprocess.Popen(
            [
                *_idmint(),
                "server",
                "--data-dir",
                str(server.data_dir),
                "--listen",
                f"127.0.0.1:{server.port}",
                "--workers",
                "1",
                "--rate-limit",
                "none",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            if server.request("GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("idmint server did not restart:\n" + log.read_text())
        time.sleep(0.2)


def eventually(check: Any, timeout: float = 5.0, interval: float = 0.1) -> Any:
    """``check()``'s first true result within ``timeout`` seconds; fail otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not within {timeout}s (last: {last!r})")
