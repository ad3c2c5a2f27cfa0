"""Prometheus metrics (prometheus-client).

Under gunicorn each worker is a process; metrics are collected across them
with prometheus-client's multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR``
is set (``idmint server`` sets it to a directory in the data dir).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

ISSUED = Counter(
    "idmint_issuance_total",
    "SVID issuance requests by type and result ('success' or the problem code of the refusal)",
    ["type", "result"],
)
T = TypeVar("T")

ISSUANCE_SECONDS = Histogram(
    "idmint_issuance_seconds",
    "Time to issue an SVID, attestation excluded",
    ["type"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REFUSED = Counter(
    "idmint_refused_total",
    "Refused requests (attestation, issuance, admin, rate limit) by action and reason",
    ["action", "reason"],
)
HTTP_REQUESTS = Counter(
    "idmint_http_requests_total",
    "HTTP requests by method, route and status",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "idmint_http_request_seconds",
    "Time to answer an HTTP request in the app (TLS and the HTTP server excluded)",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
HSM_SIGN_SECONDS = Histogram(
    "idmint_hsm_sign_seconds",
    "Time of one HSM signature",
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1),
)
RATE_LIMITED = Counter(
    "idmint_rate_limited_total", "Requests refused by a rate limit, by level", ["level"]
)
RATE_LIMIT_STORE_ERRORS = Counter(
    "idmint_rate_limit_store_errors_total", "Calls to the shared rate-limit store that failed"
)
RATE_LIMIT_STORE_REFUSED = Counter(
    "idmint_rate_limit_store_refused_total",
    "Requests refused with 503 because the rate-limit store was down (on_storage_error=closed)",
)
RATE_LIMIT_STORE_DOWN = Gauge(
    "idmint_rate_limit_store_down",
    "1 while a worker counts without the shared rate-limit store (fallback in use)",
    multiprocess_mode="livemax",
)
AUTHORITY_EXPIRY = Gauge(
    "idmint_authority_expiry_seconds",
    "Seconds until the active authority of each kind expires",
    ["kind"],
    multiprocess_mode="min",
)


def count_refusal(action: str, reason: str) -> None:
    REFUSED.labels(action, reason).inc()


def render(authority_expiry: dict[str, float]) -> tuple[bytes, str]:
    for kind, not_after in authority_expiry.items():
        AUTHORITY_EXPIRY.labels(kind).set(not_after - time.time())
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, made once per label set.

    prometheus-client checks the labels and takes a lock on every
    ``labels()`` call (~6 us); the per-request metrics called it three or
    four times for every request. Bounded: a label set past the cache's
    size is only looked up again.
    """
    return metric.labels(*labels)


def timed(kind: str, work: Callable[[], T]) -> T:
    """``work()``, its duration observed as an issuance of ``kind``.

    Results (success or the refusal's problem code) are counted per answer
    in ca/api/observe.py, so refusals before issuance count too.
    """
    with child(ISSUANCE_SECONDS, kind).time():
        return work()
