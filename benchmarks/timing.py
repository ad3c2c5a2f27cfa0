"""Shared measuring helpers: operations per second of threads running a worker."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

Worker = Callable[[], object]


def rate(
    make_worker: Callable[[], Worker],
    threads: int,
    seconds: float,
    after: Callable[[], None] | None = None,
) -> float:
    """Operations per second of ``threads`` threads; ``after`` runs inside the timing."""
    workers = [make_worker() for _ in range(threads)]
    counts = [0] * threads
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def loop(index: int) -> None:
        work, n = workers[index], 0
        barrier.wait()
        while not stop.is_set():
            work()
            n += 1
        counts[index] = n

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    if after is not None:
        after()
    return sum(counts) / (time.perf_counter() - started)


def median_rate(
    make_worker: Callable[[], Worker],
    threads: int,
    seconds: float,
    rounds: int,
    after: Callable[[], None] | None = None,
) -> int:
    """The median of ``rounds`` measurements, rounded."""
    return round(
        statistics.median(rate(make_worker, threads, seconds, after) for _ in range(rounds))
    )
