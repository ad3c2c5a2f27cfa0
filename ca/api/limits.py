"""Rate limits per caller address and per identity, with the ``limits`` library.

A moving window in each worker's memory: simple, no extra service, and a
burst from one caller cannot starve the others on that worker. Limits are
per worker, so the effective limit of a server is ``workers x`` this.
"""

from __future__ import annotations

from flask import current_app
from limits import parse, storage, strategies

from idmint.ca.errors import RateLimited

_storage = storage.MemoryStorage()
_window = strategies.MovingWindowRateLimiter(_storage)


def limit(key: str) -> None:
    """Count one request for ``key``; raise RateLimited past the configured rate."""
    rule = current_app.config.get("IDMINT_RATE_LIMIT")
    if not rule:
        return
    item = parse(rule)
    if not _window.hit(item, "idmint", key):
        raise RateLimited(f"rate limit {rule} exceeded for {key}; slow down and retry")
