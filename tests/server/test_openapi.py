"""schemathesis drives every documented operation of the real server.

No response may be a 5xx, and every status must be one the OpenAPI document
lists for that operation (the document is the one the server serves).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import status_code_conformance

from idmint.ca.api.openapi import document
from tests.server.conftest import Server

pytestmark = pytest.mark.slow  # schemathesis drives every operation


schema = schemathesis.openapi.from_dict(document())


@schemathesis.serializer("application/ocsp-request")
def _ocsp_request(context: schemathesis.SerializationContext, value: object) -> bytes:
    # Generated OCSP request bodies are arbitrary bytes or text; send them raw.
    return value if isinstance(value, bytes) else str(value).encode()


def test_served_document_is_the_one_tested(server: Server) -> None:
    status, _, served = server.request("GET", "/v1/openapi.json")
    assert status == 200 and served == document()


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms(case: schemathesis.Case, server: Server) -> None:
    response = case.call(base_url=server.url, verify=server.bundle_file, timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    case.validate_response(
        response,
        checks=[schemathesis.checks.not_a_server_error, status_code_conformance],
    )
