"""The database writer process beside gunicorn's master: start, watch, stop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from idmint.ca.server.errors import ServerError


def describe_exit(returncode: int) -> str:
    """``exited with status 1`` or ``was killed by signal SIGKILL (9)``, from Popen's code."""
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {name} ({-returncode})"
    return f"exited with status {returncode}"


class WriterProcess:
    """The database writer process (idmint.ca.storage.writer) beside gunicorn's master.

    Started before the workers, replaced if it dies, stopped after them.
    A separate interpreter rather than a fork: the master must stay free of
    threads and database handles that forked workers would inherit.

    Two run at a time: the writer and a standby, already started and waiting
    for the writer's lock (:func:`idmint.ca.storage.writer.take_turn`). A
    new interpreter needs seconds to import everything on a busy machine
    (measured: 3.9 s median under the fault suite's load), during which
    every issuance would get a 503; the standby takes over in milliseconds,
    and a new standby is started behind it.
    """

    def __init__(self, directory: Path, path: Path) -> None:
        self.directory = directory
        self.path = path
        self.process: Any = None
        self.standby: Any = None
        self._stopping = False

    def _spawn(self) -> Any:
        import subprocess
        import sys

        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "idmint.ca.storage.writer",
                str(self.directory),
                str(self.path),
                "--parent",
                str(os.getpid()),
            ]
        )

    def start(self) -> None:
        """Start the writer, wait until it listens, then start its standby."""
        import socket
        import time

        self.process = self._spawn()
        deadline = time.monotonic() + 60
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.path))
                    break
                except OSError:
                    pass  # not listening yet
            status = self.process.poll()
            if status is not None or time.monotonic() > deadline:
                self.process.kill()
                raise ServerError(
                    "the database writer (python -m idmint.ca.storage.writer) did not start "
                    f"(status {status}); "
                    "its messages are above"
                )
            time.sleep(0.05)
        self.standby = self._spawn()

    def watch(self, arbiter: Any) -> None:
        """Master hook: when the writer exits, its standby takes over; start a new standby."""
        import threading
        import time

        def loop() -> None:
            while not self._stopping:
                time.sleep(0.1)
                if self._stopping:
                    return
                if self.process.poll() is not None:
                    arbiter.log.error(
                        "the database writer %s; its standby takes over",
                        describe_exit(self.process.returncode),
                    )
                    self.process, self.standby = self.standby, None
                if self.standby is None or self.standby.poll() is not None:
                    self.standby = self._spawn()

        threading.Thread(target=loop, name="idmint-writer-watch", daemon=True).start()

    def reap(self) -> None:
        """Collect the writer's and standby's exit status before gunicorn's waitpid(-1) does."""
        for process in (self.process, self.standby):
            if process is not None:
                process.poll()

    def stop(self) -> None:
        import subprocess

        self._stopping = True
        for process in (self.standby, self.process):
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
