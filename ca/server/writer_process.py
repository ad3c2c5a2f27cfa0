"""The database writer process beside gunicorn's master: start, watch, stop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from idmint.ca.server.errors import ServerError


class WriterProcess:
    """The database writer process (idmint.ca.storage.writer) beside gunicorn's master.

    Started before the workers, restarted if it dies, stopped after them.
    A separate interpreter rather than a fork: the master must stay free of
    threads and database handles that forked workers would inherit.
    """

    def __init__(self, directory: Path, path: Path) -> None:
        self.directory = directory
        self.path = path
        self.process: Any = None
        self._stopping = False

    def start(self) -> None:
        import socket
        import subprocess
        import sys
        import time

        self.process = subprocess.Popen(
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
        deadline = time.monotonic() + 60
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.path))
                    return
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

    def watch(self, arbiter: Any) -> None:
        """Master hook: restart the writer if it exits while the server runs."""
        import threading
        import time

        def loop() -> None:
            while not self._stopping:
                # Often: workers wait for a restarted writer (up to 2 s) rather than fail.
                time.sleep(0.1)
                # gunicorn may reap it first; poll() then still says it exited.
                if self._stopping or self.process.poll() is None:
                    continue
                arbiter.log.error(
                    "the database writer exited (status %s); restarting it", self.process.returncode
                )
                try:
                    self.start()
                except ServerError as error:
                    arbiter.log.error("%s", error)

        threading.Thread(target=loop, name="idmint-writer-watch", daemon=True).start()

    def stop(self) -> None:
        import subprocess

        self._stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
