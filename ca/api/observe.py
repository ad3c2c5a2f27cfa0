"""One structured access-log line and HTTP metrics per request, with a request id.

The log line is written by the app, not by the HTTP server in front of it,
so it can name what only the app knows: the caller's SPIFFE ID or attested
subject (:func:`set_caller`) and the problem type of an error answer. The
format is ``logfmt`` (default) or ``json`` (``[log] format`` in idmint.toml,
``IDMINT_LOG_FORMAT``, ``idmint server --log-format``). Nothing secret is
logged: no bodies, no headers but the request id.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request

from idmint.ca.api import metrics
from idmint.errors import ConfigError

REQUEST_ID_HEADER = "X-Request-Id"
#: A caller-chosen request id is kept if it looks like one (a load balancer's).
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
#: Routes whose answers are issuance results (idmint_issuance_total).
ISSUANCE_ENDPOINTS = {
    "svid.x509_svid": "x509",
    "svid.jwt_svid": "jwt",
    "svid.renew": "x509-renew",
    "agent.attest": "x509-agent",
    "agent.renew": "x509-agent-renew",
    "agent.x509_batch": "x509-agent-batch",  # one per batch answer, not per SVID
    "agent.jwt": "jwt-agent-workload",
}
FORMATS = ("logfmt", "json")
#: Methods named in metric labels; any other is counted as "other", so a
#: client inventing methods cannot add label sets (time series) without end.
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))

access_log = logging.getLogger("idmint.access")


def set_caller(identity: str) -> None:
    """Name the caller (SPIFFE ID, attested subject, ``unix:uid=N``) in this request's log line."""
    g.idmint_caller = identity


def configure_logging(level: str = "info", log_format: str = "logfmt") -> None:
    """Send idmint's loggers to stderr, one line per record, in ``log_format``."""
    if log_format not in FORMATS:
        raise ConfigError(
            f"log format {log_format!r} is not one of {', '.join(FORMATS)} ([log] format)"
        )
    root = logging.getLogger("idmint")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(
            f"log level {level!r} is not one of debug, info, warning, error ([log] level)"
        )
    root.setLevel(numeric)
    for handler in list(root.handlers):
        if getattr(handler, "_idmint", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._idmint = True  # type: ignore[attr-defined]
    handler.setFormatter(JSONFormatter() if log_format == "json" else LogfmtFormatter())
    root.addHandler(handler)
    root.propagate = False


_second: tuple[int, str] = (-1, "")


def _timestamp(created: float, msecs: float) -> str:
    """ISO 8601 UTC with milliseconds; the seconds part made once per second, not per line."""
    global _second
    whole = int(created)
    second, text = _second
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)  # one tuple: threads see the pair whole
    return f"{text}.{int(msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "time": _timestamp(record.created, record.msecs),
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        fields.update(extra)
    else:
        fields["msg"] = record.getMessage()
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JSONFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), separators=(",", ":"), default=str)


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs, values quoted when they hold spaces, quotes or ``=``."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt(value)}" for key, value in _fields(record).items())


#: What makes a logfmt value need quotes (then written as a JSON string).
_NEEDS_QUOTES = re.compile(r'[ "=\n\t\\]')


def _logfmt(value: Any) -> str:
    text = value if type(value) is str else str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    return json.dumps(text)


def _problem_code(response: Response) -> str | None:
    """The last segment of an RFC 9457 answer's ``type`` (our problem codes)."""
    if response.mimetype != "application/problem+json" or response.direct_passthrough:
        return None
    document = response.get_json(silent=True)
    kind = document.get("type") if isinstance(document, dict) else None
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else None


def init_app(app: Flask) -> None:
    """Time every request, give it an id, count it, and log one line for it."""

    @app.before_request
    def start() -> None:
        g.idmint_started = time.perf_counter()
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        g.idmint_request_id = offered if _GOOD_ID.fullmatch(offered) else uuid.uuid4().hex

    @app.after_request
    def finish(response: Response) -> Response:
        started = g.get("idmint_started")
        seconds = time.perf_counter() - started if started is not None else 0.0
        request_id = g.get("idmint_request_id") or uuid.uuid4().hex
        response.headers[REQUEST_ID_HEADER] = request_id
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = response.status_code
        method = request.method if request.method in _METHODS else "other"
        metrics.child(metrics.HTTP_REQUESTS, method, route, str(status)).inc()
        metrics.child(metrics.HTTP_SECONDS, method, route).observe(seconds)
        problem = _problem_code(response) if status >= 400 else None
        kind = ISSUANCE_ENDPOINTS.get(request.endpoint or "")
        if kind is not None:
            result = "success" if status < 400 else problem or str(status)
            metrics.child(metrics.ISSUED, kind, result).inc()
        fields: dict[str, Any] = {
            "msg": "request",
            "method": request.method,
            "path": request.path,
            "status": status,
            "ms": round(seconds * 1000, 2),
            "caller": g.get("idmint_caller") or "-",
            "remote": request.remote_addr or "unix",
            "request_id": request_id,
        }
        if problem:
            fields["problem"] = problem
        access_log.info("request", extra={"fields": fields})
        return response
