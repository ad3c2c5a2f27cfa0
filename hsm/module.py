"""Loading a PKCS#11 module once per process, initialised for threads.

See :mod:`hsm._cryptoki` for why python-pkcs11's own initialisation is not
enough. A module is loaded once per path; SoftHSM reads ``SOFTHSM2_CONF`` at
``C_Initialize``, so when a caller needs another environment (another data
directory's token) and no key store still uses the module, it is finalised
and initialised again with the new environment.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pkcs11

from idmint.hsm import _cryptoki
from idmint.hsm.errors import HSMError, ModuleNotFound


@dataclass
class LoadedModule:
    """A PKCS#11 library initialised for use by many threads."""

    path: str
    lib: Any
    #: True when the library uses OS locks; False means every call must be
    #: serialised by us (the pool then opens a single session).
    thread_safe: bool
    env: dict[str, str] = field(default_factory=dict)
    users: int = 0


_lock = threading.Lock()
_modules: dict[str, LoadedModule] = {}


def acquire(path: str, env: dict[str, str] | None = None) -> LoadedModule:
    """Load (or share) the module at ``path`` with ``env`` applied; count one user."""
    env = dict(env or {})
    with _lock:
        loaded = _modules.get(path)
        if loaded is not None and loaded.env != env:
            if loaded.users:
                raise HSMError(
                    f"PKCS#11 module {path} is in use with another environment "
                    f"({loaded.env}); one process serves one token configuration"
                )
            loaded.lib.finalize()
            del _modules[path]
            loaded = None
        if loaded is None:
            os.environ.update(env)
            try:
                lib = pkcs11.lib(path)
                if lib.initialized is False:
                    lib.initialize()
            except (pkcs11.PKCS11Error, OSError) as exc:
                raise ModuleNotFound(f"cannot load PKCS#11 module {path}: {exc}") from None
            thread_safe = _cryptoki.reinitialize_with_os_locking(path)
            clear_openssl_errors()
            loaded = LoadedModule(path=path, lib=lib, thread_safe=thread_safe, env=env)
            _modules[path] = loaded
        loaded.users += 1
        return loaded


def clear_openssl_errors() -> None:
    """Empty this thread's OpenSSL error queue (libcrypto's, shared with Python's ssl).

    SoftHSM's C_Initialize asks OpenSSL for its ``rdrand`` engine, which
    OpenSSL 3 builds lack, and leaves ``no such engine`` on the calling
    thread's error queue. Python's ssl reports the last queued error when a
    later TLS read on that thread fails, so a client that merely hung up was
    logged by gunicorn as ``Invalid request ... NO_SUCH_ENGINE``. Best effort:
    without a loadable libcrypto there is nothing to clear.
    """
    crypto = _libcrypto()
    if crypto is not None:
        crypto.ERR_clear_error()


@functools.cache
def _libcrypto() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def release(loaded: LoadedModule) -> None:
    """Drop one user; the module stays initialised for the next one."""
    with _lock:
        loaded.users = max(0, loaded.users - 1)


def finalize_all() -> None:
    """Finalise every loaded module (before ``fork()``: children start clean)."""
    with _lock:
        for loaded in _modules.values():
            try:
                loaded.lib.finalize()
            except pkcs11.PKCS11Error:
                pass  # already finalised or never usable: nothing to release
        _modules.clear()
