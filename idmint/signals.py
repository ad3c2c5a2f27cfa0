"""Stopping a process's main loop from a signal handler without deadlocking it."""

from __future__ import annotations

import signal
import time
from typing import Any, Protocol

#: How long ``wait`` sleeps between looks at the flag: a signal interrupts
#: the sleep only to run its handler (PEP 475 resumes it), so this bounds
#: how late a loop notices it was told to stop.
STEP_SECONDS = 0.05


class Stopping(Protocol):
    """What a loop told to stop needs: a ``threading.Event`` or a :class:`SignalFlag`."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class SignalFlag:
    """Set by a signal handler, waited on by the main thread's loop.

    ``threading.Event`` is not safe for this: a handler runs in the main
    thread between two bytecodes, possibly inside that thread's own
    ``Event.wait`` after it has taken the event's lock back, and
    ``Event.set`` then waits for that lock for ever. Seen: a standby writer
    told to stop while it waited for its turn hung in ``Event.set`` until it
    was killed. Here ``set`` only assigns an attribute.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until set or ``timeout`` seconds have passed; whether it is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = STEP_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, STEP_SECONDS))
        return self._set

    def set_on(self, *signals: int) -> dict[int, Any]:
        """Set this flag when any of ``signals`` arrives; returns the handlers it replaced."""
        return {number: signal.signal(number, self._handle) for number in signals}

    def _handle(self, _number: int, _frame: Any) -> None:
        self.set()
