"""Per-request log lines, request ids and HTTP/issuance metrics, through the real server."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from idmint.ca.api.observe import JSONFormatter, LogfmtFormatter
from tests.server.conftest import Server, csr_pem


def _log(server: Server) -> str:
    return (server.data_dir.parent / "server.log").read_text()


def _wait_for_line(server: Server, pattern: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in _log(server).splitlines() if re.search(pattern, line)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no log line matches {pattern!r}:\n{_log(server)}"
        time.sleep(0.1)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_request_id_is_echoed_or_made(server: Server) -> None:
    status, headers, _ = server.request(
        "GET", "/healthz", headers={"X-Request-Id": "probe-00000001"}
    )
    assert status == 200 and headers["x-request-id"] == "probe-00000001"
    _, made, _ = server.request("GET", "/healthz", headers={"X-Request-Id": "bad id!"})
    assert re.fullmatch(r"[0-9a-f]{32}", made["x-request-id"])
    line = _wait_for_line(server, r"request_id=probe-00000001")
    assert "method=GET" in line and "path=/healthz" in line and "status=200" in line
    assert re.search(r"\bms=\d+(\.\d+)?\b", line)


def test_issuance_refusals_are_counted_and_logged_with_the_caller(server: Server) -> None:
    spiffe_id = "spiffe://example.org/observe/a"
    server.entry(spiffe_id, ["join_token:any:true"])
    token = server.join_token(spiffe_id)
    _, _, before = server.request("GET", "/metrics")
    body = {
        "attestation": {"type": "join_token", "token": token},
        "csr": csr_pem(ec.generate_private_key(ec.SECP256R1())),
    }
    issued, issued_headers, _ = server.request("POST", "/v1/svid/x509", body)
    assert issued == 201
    status, headers, problem = server.request("POST", "/v1/svid/x509", body)
    assert status == 401, problem
    _, _, after = server.request("GET", "/metrics")
    code = problem["type"].rsplit("/", 1)[-1]
    for result in ("success", code):
        grew = _metric(after.decode(), "idmint_issuance_total", type="x509", result=result)
        was = _metric(before.decode(), "idmint_issuance_total", type="x509", result=result)
        assert grew == was + 1, result
    assert _metric(
        after.decode(), "idmint_http_requests_total", route="/v1/svid/x509", status="401"
    )
    assert _metric(after.decode(), "idmint_authority_expiry_seconds", kind="root") > 300 * 86400
    line = _wait_for_line(server, rf"request_id={headers['x-request-id']}")
    assert f"problem={code}" in line and "status=401" in line
    # The refused caller attested nothing, so it has no name; the first had one.
    line = _wait_for_line(server, rf"request_id={issued_headers['x-request-id']}")
    assert "status=201" in line and "caller=join_token:" in line, line


def test_invented_methods_are_one_metric_label(server: Server) -> None:
    # Each label set is a time series kept for the process's life: methods a
    # client makes up must not add series without end.
    for method in ("BREW", "WHEN"):
        status, _, _ = server.request(method, "/healthz")
        assert status == 405
    _, _, text = server.request("GET", "/metrics")
    metrics = text.decode()
    assert 'method="BREW"' not in metrics and 'method="WHEN"' not in metrics
    assert _metric(metrics, "idmint_http_requests_total", method="other", status="405") >= 2
    line = _wait_for_line(server, r"method=WHEN")  # the log line still names it
    assert "status=405" in line


def test_admin_socket_calls_name_the_local_caller(server: Server) -> None:
    server.entry("spiffe://example.org/observe/admin", ["join_token:any:true"])
    line = _wait_for_line(server, r"method=POST path=/v1/entries status=201")
    assert 'caller="unix:uid=' in line and "remote=unix" in line


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("idmint.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = fields
    return record


def test_formatters_quote_what_needs_quoting() -> None:
    record = _record(path='/v1/x y="z"', status=200)
    line = LogfmtFormatter().format(record)
    assert 'path="/v1/x y=\\"z\\""' in line and "status=200" in line
    parsed = json.loads(JSONFormatter().format(record))
    assert parsed["path"] == '/v1/x y="z"' and parsed["level"] == "info"


def test_log_time_is_the_records_time_in_utc() -> None:
    from datetime import UTC, datetime

    from hypothesis import given
    from hypothesis import strategies as st

    @given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
    def check(created: float) -> None:
        record = _record()
        record.created, record.msecs = created, (created - int(created)) * 1000
        stamp = json.loads(JSONFormatter().format(record))["time"]
        expected = datetime.fromtimestamp(int(created), UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert stamp == f"{expected}.{int(record.msecs):03d}Z"

    check()


def test_logfmt_quotes_every_separator_and_nothing_else() -> None:
    for value in ("a b", 'a"b', "a=b", "a\nb", "a\tb", "a\\b", ""):
        line = LogfmtFormatter().format(_record(v=value))
        assert f"v={json.dumps(value)}" in line, (value, line)
    for plain in ("spiffe://example.org/a", "join_token:1-2", 12.5, None):
        line = LogfmtFormatter().format(_record(v=plain))
        assert line.endswith(f" v={plain}"), (plain, line)


DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"


def _names_in(expression: str) -> set[str]:
    return set(re.findall(r"\bidmint_[a-z_]+\b", expression))


def test_dashboard_and_alerts_use_metrics_the_server_has(server: Server) -> None:
    import yaml

    # One issuance and one request first: families appear once they have samples.
    server.x509_by_token("spiffe://example.org/observe/metrics")
    server.request("GET", "/healthz")
    # Every family the server exports, with the series suffixes of histograms.
    _, _, text = server.request("GET", "/metrics")
    families = set(re.findall(r"^# TYPE (idmint_\w+) (\w+)", text.decode(), re.M))
    known = set()
    for name, kind in families:
        known.add(name)
        if kind == "histogram":
            known |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "idmint-alerts.yml").read_text())
    expressions = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "idmint-dashboard.json").read_text())
    expressions += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(_names_in(e) for e in expressions))
    assert used, "no idmint metric named"
    assert used <= known, f"not exported by the server: {sorted(used - known)}"
