"""Refusals the anomaly response makes; each names the signal and its numbers."""

from __future__ import annotations

from idmint.ca.errors import CAError


class AnomalyThrottled(CAError):
    """This identity is issuing far above its usual rate and is throttled; retry later."""

    code = "anomaly-throttled"


class StepUpRequired(CAError):
    """This identity behaves unlike itself: renewal by proof is refused, attest afresh."""

    code = "step-up-required"


class AnomalyDenied(CAError):
    """This identity was denied by the anomaly response: its entry is disabled."""

    code = "anomaly-denied"
