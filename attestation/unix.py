"""``unix`` workload attestor: who is on the other end of a Unix socket.

The kernel says who connected (``SO_PEERCRED``: pid, uid, gid at connect
time), and ``/proc/PID`` says the rest: supplementary groups and, opt-in,
the executable's path and SHA-256. Selectors (SPIRE's names)::

    unix:uid:1000  unix:gid:1000  unix:user:alice  unix:group:alice
    unix:supplementary_gid:27  unix:supplementary_group:sudo
    unix:path:/usr/bin/python3.11  unix:sha256:<hex>     (opt-in)

PID reuse: a PID read at connect time may belong to another process by the
time ``/proc`` is read. :class:`Caller` holds a pidfd of the connecting
process, from ``SO_PEERPIDFD`` (Linux 6.5+, the kernel's own answer: it
names the process that connected) or else ``pidfd_open`` at accept, plus
the process's start time. :meth:`Caller.confirm`, called after attesting,
refuses when the process behind the pidfd has exited (so the PID may be
someone else's now), when ``/proc/PID`` shows a different start time or
effective uid, or, for the ``pidfd_open`` fallback, when the process started
after the connection was accepted (it cannot be the one that connected).
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from idmint.attestation.base import AttestationFailed
from idmint.attestation.errors import CallerGone

#: ``SO_PEERPIDFD`` (include/uapi/asm-generic/socket.h); Python has no name for it yet.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
#: Executables larger than this are not hashed (unix:sha256 is then left out).
DEFAULT_HASH_LIMIT = 256 * 1024 * 1024
_TICKS = os.sysconf("SC_CLK_TCK")


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        raise CallerGone(f"process {pid} is gone") from None
    # The command name (field 2) is in parentheses and may contain spaces.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[19])


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        raise CallerGone(f"process {pid} is gone") from None
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


@dataclass
class Caller:
    """The process that connected to a Unix socket, as the kernel reported it."""

    pid: int
    uid: int
    gid: int
    started: int
    pidfd: int | None = None
    #: True when the pidfd came from SO_PEERPIDFD (no race with PID reuse at all).
    kernel_pidfd: bool = False
    accepted_ticks: int = field(default=0)

    @classmethod
    def of(cls, sock: socket.socket) -> Caller:
        """Read the peer of an accepted Unix socket connection."""
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        accepted = int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS) + 1
        if pid <= 0:
            raise AttestationFailed("the kernel reported no process for this connection")
        pidfd: int | None = None
        kernel = False
        try:
            pidfd = int(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
            kernel = True
        except OSError:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = None  # exited already: confirm() will refuse
        try:
            started = start_ticks(pid)
        except CallerGone:
            if pidfd is not None:
                os.close(pidfd)
            raise
        return cls(pid, uid, gid, started, pidfd, kernel, accepted)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def confirm(self) -> None:
        """Raise :class:`CallerGone` unless the connecting process is still the one at PID."""
        if self.pidfd is None:
            raise CallerGone(f"process {self.pid} exited before it could be attested")
        try:
            signal.pidfd_send_signal(self.pidfd, 0)
        except ProcessLookupError:
            raise CallerGone(f"process {self.pid} exited; its PID may be reused") from None
        except PermissionError:
            pass  # alive, owned by another user: signal 0 still proves it exists
        if start_ticks(self.pid) != self.started:
            raise CallerGone(f"PID {self.pid} now belongs to another process")
        if not self.kernel_pidfd and self.started > self.accepted_ticks:
            raise CallerGone(f"PID {self.pid} started after it connected: reused")
        effective = _status(self.pid).get("Uid", "").split()
        if len(effective) < 2 or int(effective[1]) != self.uid:
            raise CallerGone(f"process {self.pid} changed its user since it connected")


@dataclass(frozen=True)
class UnixAttestor:
    """Selectors for a :class:`Caller`; path and sha256 only when asked for."""

    with_path: bool = False
    with_sha256: bool = False
    hash_limit: int = DEFAULT_HASH_LIMIT

    type = "unix"

    def attest(self, caller: Caller) -> list[str]:
        selectors = [f"unix:uid:{caller.uid}", f"unix:gid:{caller.gid}"]
        try:
            selectors.append(f"unix:user:{pwd.getpwuid(caller.uid).pw_name}")
        except KeyError:
            pass  # a uid with no passwd entry (containers): uid alone
        try:
            selectors.append(f"unix:group:{grp.getgrgid(caller.gid).gr_name}")
        except KeyError:
            pass
        for gid in _status(caller.pid).get("Groups", "").split():
            selectors.append(f"unix:supplementary_gid:{gid}")
            try:
                selectors.append(f"unix:supplementary_group:{grp.getgrgid(int(gid)).gr_name}")
            except KeyError:
                pass
        if self.with_path or self.with_sha256:
            selectors.extend(self._executable(caller.pid))
        return selectors

    def _executable(self, pid: int) -> list[str]:
        try:
            path = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            # Another user's process and we are not root: no path, not an error.
            return []
        found = [f"unix:path:{path}"] if self.with_path else []
        if self.with_sha256:
            digest = hashlib.sha256()
            try:
                # Through /proc/PID/exe: the file that runs, even if replaced on disk since.
                with open(f"/proc/{pid}/exe", "rb") as binary:
                    if os.fstat(binary.fileno()).st_size <= self.hash_limit:
                        for block in iter(lambda: binary.read(1 << 20), b""):
                            digest.update(block)
                        found.append(f"unix:sha256:{digest.hexdigest()}")
            except OSError:
                pass
        return found
