"""Prometheus counters of the anomaly response (collected like ca/api/metrics.py's)."""

from __future__ import annotations

from prometheus_client import Counter

DECISIONS = Counter(
    "idmint_anomaly_decisions_total",
    "Anomaly decisions by action (observe, throttle, step-up, deny) and signal",
    ["action", "signal"],
)
REFUSED = Counter(
    "idmint_anomaly_refusals_total",
    "Requests refused because of a standing anomaly decision, by action",
    ["action"],
)
