"""nginx (Debian's) serves HTTPS on an SVID kept current by ``idmint svid x509 --watch``.

The example in examples/nginx_mtls runs as a user would run it. A client
with its own SVID calls nginx in a loop across several renewals of both
SVIDs and a root rotation; every request is counted and none may fail.
curl, a client we did not write, is refused without an SVID and accepted
with one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.server.conftest import Server, clean_env
from tests.tls import self_signed

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "nginx_mtls"
BIN = Path(sys.executable).parent
TTL = 60
RENEW_AT = "0.05"  # every 3 s of a 60 s SVID


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env() -> dict[str, str]:
    env = clean_env(IDMINT=str(BIN / "idmint"), RENEW_AT=RENEW_AT)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def _chain(directory: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((directory / "svid.pem").read_bytes())


def _wait(what: str, condition: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _roots_at_least(directory: Path, count: int) -> Callable[[], bool]:
    def check() -> bool:
        bundle = (directory / "bundle.pem").read_bytes()
        return len(x509.load_pem_x509_certificates(bundle)) >= count

    return check


def _issued_by_other(directory: Path, intermediate: x509.Certificate) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return _chain(directory)[1] != intermediate
        except (FileNotFoundError, ValueError, IndexError):
            return False  # between the helper's atomic replacements

    return check


class Serials:
    """Counts the distinct leaves seen in a directory the helper rewrites."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.seen = directory, set[int]()

    def poll(self) -> int:
        try:
            self.seen.add(_chain(self.directory)[0].serial_number)
        except (FileNotFoundError, ValueError, IndexError):
            pass  # between the helper's atomic replacements
        return len(self.seen)

    def renewed(self, more: int) -> Callable[[], bool]:
        target = self.poll() + more
        return lambda: self.poll() >= target


def _curl(port: int, *args: str) -> tuple[str, str]:
    done = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args, f"https://localhost:{port}/"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    body, _, code = done.stdout.rpartition("\n")
    return code, body + done.stderr


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return (out or "") + (err or "")


@pytest.mark.slow
def test_nginx_on_svids_through_renewals_and_a_root_rotation(
    server: Server, tmp_path: Path
) -> None:
    server.entry(
        "spiffe://example.org/ex/nginx",
        ["join_token:any:true"],
        x509_ttl_seconds=TTL,
        dns_names=["localhost"],
    )
    server.entry(
        "spiffe://example.org/ex/nginx-client", ["join_token:any:true"], x509_ttl_seconds=TTL
    )
    token_file = tmp_path / "nginx-token"
    token_file.write_text(server.join_token("spiffe://example.org/ex/nginx"))
    token_file.chmod(0o600)
    port, nginx_dir, client_dir = _port(), tmp_path / "nginx", tmp_path / "client"
    run = subprocess.Popen(
        [
            str(EXAMPLE / "run.sh"),
            server.url,
            server.bundle_file,
            str(token_file),
            str(nginx_dir),
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    helper = subprocess.Popen(
        server.svid_x509_command(
            server.join_token("spiffe://example.org/ex/nginx-client"),
            client_dir,
            "--watch",
            "--renew-at",
            RENEW_AT,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _exercise(server, port, run, helper, nginx_dir, client_dir, tmp_path)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            nginx_pid = nginx_dir / "nginx.pid"
            if nginx_pid.exists():
                os.kill(int(nginx_pid.read_text()), signal.SIGKILL)
        if helper.poll() is None:
            helper.kill()


def _exercise(
    server: Server,
    port: int,
    run: subprocess.Popen[str],
    helper: subprocess.Popen[str],
    nginx_dir: Path,
    client_dir: Path,
    tmp_path: Path,
) -> None:
    stop_file = tmp_path / "stop"
    client: subprocess.Popen[str] | None = None
    try:
        _wait(
            "nginx",
            lambda: (nginx_dir / "nginx.pid").exists() and (client_dir / "svid.pem").exists(),
        )
        client = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE / "client.py"),
                "--svid",
                str(client_dir),
                "--url",
                f"https://localhost:{port}/",
                "--seconds",
                "240",
                "--until-file",
                str(stop_file),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        nginx_leaves, client_leaves = Serials(nginx_dir / "svid"), Serials(client_dir)
        for serials in (nginx_leaves, client_leaves):
            _wait("two renewals", serials.renewed(2))
        old_intermediate = _chain(nginx_dir / "svid")[1]

        server.authority("prepare", "root")
        new_root = next(
            a for a in server.authority("list") if a["kind"] == "root" and a["state"] == "prepared"
        )
        # Both sides renew and so learn the new root before anything chains to it.
        for directory in (nginx_dir / "svid", client_dir):
            _wait("the new root in the bundle", _roots_at_least(directory, 2))
        server.authority("activate", "root", "--id", str(new_root["id"]))
        server.authority("prepare", "intermediate")
        server.authority("activate", "intermediate")
        for directory in (nginx_dir / "svid", client_dir):
            _wait(
                "a leaf under the new intermediate", _issued_by_other(directory, old_intermediate)
            )
        for serials in (nginx_leaves, client_leaves):
            _wait("two more renewals", serials.renewed(2))
        stop_file.touch()
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, out + err
        counted = json.loads(out.strip().splitlines()[-1])
        assert counted["failed"] == 0, counted
        assert counted["requests"] >= 50, counted
        assert len(nginx_leaves.seen) >= 5 and len(client_leaves.seen) >= 5
    finally:
        stop_file.touch()
        if client is not None and client.poll() is None:
            client.kill()
        helper_log = _stop(helper)

    # Third-party client: curl with the client's (now stable) SVID, and without one.
    code, body = _curl(
        port,
        "--cacert",
        str(client_dir / "bundle.pem"),
        "--cert",
        str(client_dir / "svid.pem"),
        "--key",
        str(client_dir / "svid.key"),
    )
    assert code == "200" and "client certificate SUCCESS" in body, (code, body, helper_log)
    code, body = _curl(port, "--cacert", str(client_dir / "bundle.pem"))
    assert code == "400" and "No required SSL certificate was sent" in body, (code, body)
    # A certificate the idmint bundle does not vouch for is refused too.
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "stranger.pem").write_bytes(self_signed(key, "stranger"))
    (tmp_path / "stranger.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    code, body = _curl(
        port,
        "--cacert",
        str(client_dir / "bundle.pem"),
        "--cert",
        str(tmp_path / "stranger.pem"),
        "--key",
        str(tmp_path / "stranger.key"),
    )
    assert code == "400" and "certificate" in body.lower(), (code, body)
    nginx_pid = int((nginx_dir / "nginx.pid").read_text())
    os.killpg(run.pid, signal.SIGTERM)
    log = _stop(run)
    _wait("nginx to stop with the example", lambda: not Path(f"/proc/{nginx_pid}").exists(), 30)
    assert run.returncode == 0, log
