"""The HTTP API (Flask): an app factory and one blueprint per resource."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from idmint.ca.api import admin, bundle, health, observe, revocation, svid
from idmint.ca.api.openapi import document
from idmint.ca.api.problems import from_error, from_http
from idmint.ca.config import CAConfig
from idmint.errors import IdmintError

MAX_REQUEST_BYTES = 64 * 1024


def create_app(
    config: CAConfig, rate_limit: str | None = "600/minute", writer_socket: str | None = None
) -> Flask:
    """A Flask app serving ``config``'s trust domain (services open lazily per process).

    ``writer_socket``: the Unix socket of the writer process that makes the
    issuance path's writes (see ca/writer.py); without it each process writes.
    """
    app = Flask("idmint")
    app.config.update(
        IDMINT_CONFIG=config,
        IDMINT_WRITER_SOCKET=writer_socket,
        IDMINT_RATE_LIMIT=rate_limit,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        JSON_SORT_KEYS=False,
    )
    for module in (svid, bundle, admin, health, revocation):
        app.register_blueprint(module.blueprint)
    log = config.extra.get("log", {}) or {}
    observe.configure_logging(str(log.get("level", "info")), str(log.get("format", "logfmt")))
    observe.init_app(app)

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
