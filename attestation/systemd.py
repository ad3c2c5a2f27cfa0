"""``systemd`` workload attestor: the unit a process runs in, from its cgroup.

Under systemd every service runs in its own cgroup, e.g. (cgroup v2)
``0::/system.slice/nginx.service``; a user's service sits under
``user.slice/user-1000.slice/user@1000.service/app.slice/app.service``. The
innermost ``.service`` (or ``.scope``) names the unit. Selectors::

    systemd:id:nginx.service
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from idmint.attestation.errors import CallerGone
from idmint.attestation.unix import Caller

_UNIT_SUFFIXES = (".service", ".scope")


def unit_of(cgroup_text: str) -> str | None:
    """The innermost systemd unit named in a /proc/PID/cgroup file, if any."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        # cgroup v2 ("0::/path") or v1's systemd hierarchy ("1:name=systemd:/path").
        if len(parts) != 3 or parts[1] not in ("", "name=systemd"):
            continue
        for part in reversed(parts[2].split("/")):
            if part.endswith(_UNIT_SUFFIXES):
                return part
    return None


@dataclass(frozen=True)
class SystemdAttestor:
    """``systemd:id:<unit>`` for a caller that runs in a systemd unit."""

    type = "systemd"

    def attest(self, caller: Caller) -> list[str]:
        try:
            text = Path(f"/proc/{caller.pid}/cgroup").read_text()
        except OSError:
            raise CallerGone(f"process {caller.pid} is gone") from None
        unit = unit_of(text)
        return [] if unit is None else [f"systemd:id:{unit}"]
