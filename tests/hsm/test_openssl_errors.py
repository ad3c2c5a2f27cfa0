"""Loading SoftHSM leaves nothing on OpenSSL's error queue for Python's ssl to report.

SoftHSM's C_Initialize leaves ``no such engine`` (its rdrand engine, absent
from OpenSSL 3) on the calling thread's libcrypto error queue; a later TLS
read error on that thread was then reported with it (gunicorn logged
``Invalid request ... NO_SUCH_ENGINE``). A fresh process, so the module is
initialised there, in the thread that then looks at the queue.
"""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
import textwrap

import pytest

from idmint.hsm.softhsm import SoftHSMToken

PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, sys
    crypto = ctypes.CDLL(ctypes.util.find_library("crypto"))
    crypto.ERR_peek_last_error.restype = ctypes.c_ulong
    from idmint.hsm import module
    if sys.argv[3] == "raw":  # python-pkcs11 alone: what SoftHSM leaves behind
        import os, pkcs11
        os.environ["SOFTHSM2_CONF"] = sys.argv[2]
        pkcs11.lib(sys.argv[1])
    else:
        module.acquire(sys.argv[1], {"SOFTHSM2_CONF": sys.argv[2]})
    print(crypto.ERR_peek_last_error())
    """
)


def _left_on_the_queue(token: SoftHSMToken, how: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, token.module, str(token.conf), how],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(ctypes.util.find_library("crypto") is None, reason="no libcrypto to inspect")
def test_loading_the_module_leaves_openssls_error_queue_empty(token: SoftHSMToken) -> None:
    raw = _left_on_the_queue(token, "raw")
    if raw == 0:
        pytest.skip("this SoftHSM build leaves no OpenSSL error behind: nothing to clear")
    assert _left_on_the_queue(token, "idmint") == 0
