"""The HTTP API (Flask): an app factory and one blueprint per resource."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from idmint.ca.anomaly.monitor import REQUEST_SOURCE
from idmint.ca.api import (
    admin,
    agent,
    anomaly,
    audit,
    bundle,
    health,
    limits,
    observe,
    revocation,
    svid,
)
from idmint.ca.api.openapi import document
from idmint.ca.api.problems import from_error, from_http
from idmint.ca.config import CAConfig
from idmint.errors import IdmintError

MAX_REQUEST_BYTES = 64 * 1024


#: ``create_app(rate_limit=...)`` not given: the limits are ``config.limits``.
FROM_CONFIG = "from-config"


def create_app(
    config: CAConfig, writer_socket: str | None = None, rate_limit: str | None = FROM_CONFIG
) -> Flask:
    """A Flask app serving ``config``'s trust domain (services open lazily per process).

    ``writer_socket``: the Unix socket of the writer process that makes the
    issuance path's writes (see ca/writer.py); without it each process writes.
    Rate limits come from ``config.limits`` (the ``[limits]`` section);
    ``rate_limit`` (a rule, or None for none), kept for older callers,
    replaces its per-address and per-identity rules.
    """
    if rate_limit != FROM_CONFIG:
        from dataclasses import replace

        config = replace(config, limits=config.limits.with_rate_limit(rate_limit, "rate_limit"))
    app = Flask("idmint")
    app.config.update(
        IDMINT_CONFIG=config,
        IDMINT_WRITER_SOCKET=writer_socket,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        JSON_SORT_KEYS=False,
    )
    for module in (svid, bundle, admin, health, revocation, audit, anomaly, agent):
        app.register_blueprint(module.blueprint)
    limiter = limits.Limiter(config.limits, config.trust_domain, limits.audit_if_bounded)
    limits.init_app(app, limiter)
    log = config.extra.get("log", {}) or {}
    observe.configure_logging(str(log.get("level", "info")), str(log.get("format", "logfmt")))
    observe.init_app(app)

    @app.before_request
    def remember_source() -> None:
        # The anomaly response learns source networks; the issuer is not HTTP-aware.
        REQUEST_SOURCE.set(request.remote_addr)

    @app.get("/v1/openapi.json")
    def openapi() -> Any:
        return jsonify(document())

    @app.errorhandler(IdmintError)
    def idmint_error(error: IdmintError) -> Any:
        return from_error(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        return from_http(error)

    return app
