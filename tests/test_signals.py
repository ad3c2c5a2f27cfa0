"""A flag set from a signal handler never deadlocks the loop waiting on it (idmint.signals)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from idmint.signals import SignalFlag

# The handler is made to run at every line of the flag's own wait (a trace
# function raises the signal there; raise_signal runs its handler at once),
# including the lines where a lock is held. With threading.Event in place of
# the flag this hangs at the first wait: Event.set waits for the lock its own
# thread holds inside Event.wait (what a standby writer did on SIGTERM).
EVERY_LINE = textwrap.dedent(
    """
    import signal, sys, threading
    sys.path.insert(0, sys.argv[1])
    import idmint.signals as signals
    flag, handled, inside = signals.SignalFlag(), [], [False]
    signal.signal(signal.SIGUSR1, lambda *_: (handled.append(1), flag.set()))

    def each_line(frame, event, arg):
        if event == "line" and not inside[0]:
            inside[0] = True
            try:
                signal.raise_signal(signal.SIGUSR1)
            finally:
                inside[0] = False
        return each_line

    def calls(frame, event, arg):
        return each_line if frame.f_code.co_filename == signals.__file__ else None

    for _ in range(20):
        sys.settrace(calls)
        flag.wait(0.001)
        sys.settrace(None)
        flag._set = False
    print(len(handled))
    """
)


def test_setting_from_a_signal_handler_inside_wait_never_hangs(tmp_path: Path) -> None:
    script = tmp_path / "every_line.py"
    script.write_text(EVERY_LINE)
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, str(script), root], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20  # the handler ran inside every wait


def test_wait_returns_when_set_or_timed_out() -> None:
    flag = SignalFlag()
    started = time.monotonic()
    assert flag.wait(0.2) is False
    assert 0.2 <= time.monotonic() - started < 2
    previous = flag.set_on(signal.SIGUSR2)
    try:
        signal.raise_signal(signal.SIGUSR2)
        assert flag.is_set() and flag.wait(10) is True
    finally:
        signal.signal(signal.SIGUSR2, previous[signal.SIGUSR2])


@pytest.mark.slow
def test_a_standby_writer_stops_on_sigterm(tmp_path: Path) -> None:
    """The case seen: a standby writer, waiting for its turn, told to stop."""
    from tests.server.conftest import clean_env, init_data_dir

    data = init_data_dir(tmp_path / "data")
    sock = data / "server" / "writer.sock"
    sock.parent.mkdir(mode=0o700, exist_ok=True)
    command = [sys.executable, "-m", "idmint.ca.storage.writer", str(data), str(sock)]
    env = clean_env()
    first = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline and first.poll() is None, "no writer"
            time.sleep(0.05)
        for _ in range(20):  # standbys, each stopped while it waits for the turn
            standby = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(timeout=10) is not None
    finally:
        first.terminate()
        first.wait(timeout=20)
