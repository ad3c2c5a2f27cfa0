"""Prometheus metrics (prometheus-client).

Under gunicorn each worker is a process; metrics are collected across them
with prometheus-client's multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR``
is set (``idmint server`` sets it to a directory in the data dir).
"""

from __future__ import annotations

import os
import time

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
ISSUANCE_SECONDS = Histogram(
    "idmint_issuance_seconds",
    "Time to issue an SVID, attestation excluded",
    ["type"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
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
AUTHORITY_EXPIRY = Gauge(
    "idmint_authority_expiry_seconds",
    "Seconds until the active authority of each kind expires",
    ["kind"],
    multiprocess_mode="min",
)


def render(authority_expiry: dict[str, float]) -> tuple[bytes, str]:
    for kind, not_after in authority_expiry.items():
        AUTHORITY_EXPIRY.labels(kind).set(not_after - time.time())
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
