"""A bounded pool of PKCS#11 sessions that heals after the token drops them.

Why a pool: real HSMs limit sessions (a YubiHSM2 allows 16, a Luna peaks near
30 concurrent requests), so ``max_sessions`` bounds how many exist, and each
thread borrows one for a single operation. A PKCS#11 session runs one
operation at a time, so borrowing is also what makes concurrent signing safe;
the module itself is initialised with OS locking (see :mod:`hsm._cryptoki`).

Why generations: when a token drops our sessions or our login, every pooled
session is suspect at once. The first thread to notice bumps the generation,
logs in again and opens fresh sessions; a thread that still holds an older
session simply throws it away instead of resetting the pool a second time.

Why the key cache: python-pkcs11 binds a key object to one session, and a
``C_FindObjects`` per signature would cost more than SoftHSM's signature
itself, so each pooled session remembers the handles it has looked up.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11

from idmint.hsm import _cryptoki
from idmint.hsm.config import Pin
from idmint.hsm.errors import CryptokiError, PinError, SessionLost, TokenNotFound
from idmint.hsm.module import LoadedModule

#: Errors after which a session (or our login) cannot be trusted any more.
SESSION_LOST_ERRORS: tuple[type[Exception], ...] = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.KeyHandleInvalid,
    p11.ObjectHandleInvalid,
    p11.DeviceError,
)


class PooledSession:
    """One open session with the key handles it has looked up."""

    __slots__ = ("generation", "keys", "session")

    def __init__(self, session: Any, generation: int) -> None:
        self.session = session
        self.generation = generation
        self.keys: dict[bytes, Any] = {}

    def close(self) -> None:
        try:
            self.session.close()
        except p11.PKCS11Error:
            # Already closed by the token; nothing left to release.
            pass


class SessionPool:
    """Up to ``max_sessions`` sessions on one token, logged in once.

    The fast path (an idle session is there) is one ``SimpleQueue`` get and
    one put, both in C: a ``threading.Semaphore`` costs a few microseconds
    per borrow, several percent of a SoftHSM signature.
    """

    def __init__(self, module: LoadedModule, token: Any, pin: Pin, max_sessions: int) -> None:
        # A module that cannot lock gets one session: we then serialise.
        self.max_sessions = max_sessions if module.thread_safe else 1
        self._module = module
        self._token = token
        self._label = token.label
        self._pin = pin
        self._idle: queue.SimpleQueue[PooledSession] = queue.SimpleQueue()
        self._created = 0
        self._count_lock = threading.Lock()
        self._reset_lock = threading.Lock()
        self._generation = 0
        self._closed = False
        # Fail fast on a wrong PIN: open and log in one session now.
        self.release(self._borrow_new_or_wait())

    @property
    def token_label(self) -> str:
        return str(self._label)

    def _open(self) -> PooledSession:
        try:
            session = self._token.open(rw=True)
        except (p11.TokenNotPresent, p11.TokenNotRecognised, p11.SlotIDInvalid) as exc:
            raise TokenNotFound(
                f"token disappeared: {type(exc).__name__}", token=self._label
            ) from None
        except p11.PKCS11Error as exc:
            raise SessionLost(
                f"cannot open a session: {type(exc).__name__}", token=self._label
            ) from None
        try:
            _cryptoki.login(self._module.path, session.handle, self._pin.reveal())
        except CryptokiError as exc:
            _close_quietly(session)
            if exc.rv in (0xA0, 0xA1, 0xA4):  # PIN_INCORRECT, PIN_INVALID, PIN_LOCKED
                raise PinError(
                    "the token refused the PIN" + (" and is now locked" if exc.rv == 0xA4 else ""),
                    token=self._label,
                ) from None
            raise SessionLost(f"cannot log in: {exc}", token=self._label) from None
        return PooledSession(session, self._generation)

    def ensure_login(self, pooled: PooledSession) -> None:
        """Log in again if the token forgot us (a no-op while logged in).

        A logged-out session does not fail a search for private objects, it
        finds nothing; so before reporting a key missing we make sure the
        search ran logged in.
        """
        try:
            _cryptoki.login(self._module.path, pooled.session.handle, self._pin.reveal())
        except CryptokiError as exc:
            raise SessionLost(f"cannot log in again: {exc}", token=self._label) from None
        pooled.keys.clear()

    def _forget(self, pooled: PooledSession) -> None:
        pooled.close()
        with self._count_lock:
            self._created -= 1

    def _borrow_new_or_wait(self) -> PooledSession:
        while True:
            with self._count_lock:
                may_open = self._created < self.max_sessions
                if may_open:
                    self._created += 1
            if may_open:
                try:
                    return self._open()
                except BaseException:
                    with self._count_lock:
                        self._created -= 1
                    raise
            try:
                # Bounded wait: sessions forgotten after a reset free a place
                # without anything being put back in the queue.
                pooled = self._idle.get(timeout=0.05)
            except queue.Empty:
                continue
            if pooled.generation == self._generation:
                return pooled
            self._forget(pooled)

    def acquire(self) -> PooledSession:
        """Borrow a session; blocks while ``max_sessions`` are in use."""
        if self._closed:
            raise SessionLost("the key store is closed", token=self._label)
        try:
            pooled = self._idle.get_nowait()
        except queue.Empty:
            return self._borrow_new_or_wait()
        if pooled.generation == self._generation:
            return pooled
        self._forget(pooled)  # from before a reset
        return self._borrow_new_or_wait()

    def release(self, pooled: PooledSession) -> None:
        """Return a healthy session to the pool."""
        if pooled.generation == self._generation and not self._closed:
            self._idle.put(pooled)
        else:
            self._forget(pooled)

    def discard(self, pooled: PooledSession) -> None:
        """Give back a session that failed; reset the pool if it was current.

        Only the first thread to report a failure of the current generation
        resets; idle sessions of older generations are closed when next
        borrowed, later reports about the same generation only drop their
        own session.
        """
        with self._reset_lock:
            if pooled.generation == self._generation:
                self._generation += 1
        self._forget(pooled)

    def close(self) -> None:
        self._closed = True
        for pooled in self._drain():
            self._forget(pooled)

    def _drain(self) -> list[PooledSession]:
        drained = []
        while True:
            try:
                drained.append(self._idle.get_nowait())
            except queue.Empty:
                return drained

    def idle_sessions(self) -> list[PooledSession]:
        """The current-generation sessions resting in the pool (tests, diagnostics)."""
        idle = self._drain()
        for pooled in idle:
            self._idle.put(pooled)
        return [p for p in idle if p.generation == self._generation]


def _close_quietly(session: Any) -> None:
    try:
        session.close()
    except pkcs11.PKCS11Error:
        pass  # the token already closed it
