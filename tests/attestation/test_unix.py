"""The unix and systemd workload attestors on real sockets and real processes."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from idmint.attestation.systemd import SystemdAttestor, unit_of
from idmint.attestation.unix import Caller, CallerGone, UnixAttestor, start_ticks


def _caller_of_this_process() -> tuple[Caller, socket.socket, socket.socket]:
    left, right = socket.socketpair(socket.AF_UNIX)
    return Caller.of(left), left, right


def test_selectors_of_this_process() -> None:
    caller, *sockets = _caller_of_this_process()
    try:
        assert (caller.pid, caller.uid, caller.gid) == (os.getpid(), os.geteuid(), os.getegid())
        selectors = UnixAttestor().attest(caller)
        assert f"unix:uid:{os.geteuid()}" in selectors
        assert f"unix:gid:{os.getegid()}" in selectors
        import grp
        import pwd

        assert f"unix:user:{pwd.getpwuid(os.geteuid()).pw_name}" in selectors
        assert f"unix:group:{grp.getgrgid(os.getegid()).gr_name}" in selectors
        for gid in os.getgroups():
            assert f"unix:supplementary_gid:{gid}" in selectors
        # Opt-in only.
        assert not any(s.startswith(("unix:path:", "unix:sha256:")) for s in selectors)
        caller.confirm()
    finally:
        caller.close()
        for s in sockets:
            s.close()


def test_path_and_sha256_are_of_the_running_executable() -> None:
    caller, *sockets = _caller_of_this_process()
    try:
        executable = os.path.realpath(f"/proc/{os.getpid()}/exe")
        digest = hashlib.sha256(Path(executable).read_bytes()).hexdigest()
        selectors = UnixAttestor(with_path=True, with_sha256=True).attest(caller)
        assert f"unix:path:{executable}" in selectors
        assert f"unix:sha256:{digest}" in selectors
        small = UnixAttestor(with_sha256=True, hash_limit=10).attest(caller)
        assert not any(s.startswith("unix:sha256:") for s in small)
    finally:
        caller.close()
        for s in sockets:
            s.close()


def _caller_that_exits(tmp_path: Path) -> Caller:
    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
            " sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
    )
    connection, _ = listener.accept()
    caller = Caller.of(connection)
    assert caller.pid == child.pid
    caller.confirm()  # alive and the same: fine
    assert child.stdin is not None
    child.stdin.close()
    child.wait()
    connection.close()
    listener.close()
    return caller


def test_a_caller_that_exited_is_refused(tmp_path: Path) -> None:
    caller = _caller_that_exits(tmp_path)
    try:
        with pytest.raises(CallerGone):
            caller.confirm()
    finally:
        caller.close()


def test_a_reused_pid_is_refused() -> None:
    # Another process now at the PID (a later start time than recorded).
    caller, *sockets = _caller_of_this_process()
    try:
        caller.started -= 1
        with pytest.raises(CallerGone, match="another process"):
            caller.confirm()
        # Without SO_PEERPIDFD: a process that started after the connection was accepted.
        caller.started = start_ticks(os.getpid())
        caller.kernel_pidfd = False
        caller.accepted_ticks = caller.started - 1
        with pytest.raises(CallerGone, match="reused"):
            caller.confirm()
    finally:
        caller.close()
        for s in sockets:
            s.close()


def test_a_changed_user_is_refused() -> None:
    caller, *sockets = _caller_of_this_process()
    try:
        caller.uid += 1
        with pytest.raises(CallerGone, match="user"):
            caller.confirm()
    finally:
        caller.close()
        for s in sockets:
            s.close()


@pytest.mark.parametrize(
    ("cgroup", "unit"),
    [
        ("0::/system.slice/nginx.service\n", "nginx.service"),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/web.service\n",
            "web.service",
        ),
        ("12:cpu:/docker/abc\n1:name=systemd:/system.slice/sshd.service\n", "sshd.service"),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
        ("0::/\n", None),
        ("0::/docker/0123abcd\n", None),
    ],
)
def test_unit_from_cgroup(cgroup: str, unit: str | None) -> None:
    assert unit_of(cgroup) == unit


def test_systemd_attestor_reads_this_process() -> None:
    caller, *sockets = _caller_of_this_process()
    try:
        expected = unit_of(Path(f"/proc/{os.getpid()}/cgroup").read_text())
        got = SystemdAttestor().attest(caller)
        assert got == ([] if expected is None else [f"systemd:id:{expected}"])
    finally:
        caller.close()
        for s in sockets:
            s.close()
