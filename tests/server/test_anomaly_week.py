"""Anomaly response through the real server after a learned week (issue 15).

The week is learned in-process (tests/server/learned.py) before the
server first sees the entry. What follows goes over HTTPS to ``idmint
server`` (default learning thresholds and ``sync_seconds``; one worker, so
counts per minute are exact).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from idmint.ca.storage.models import AuditEvent
from idmint.pop import make_proof
from tests.server.conftest import (
    Server,
    csr_pem,
    start_attesting_server,
    stop_server,
)
from tests.server.learned import learn_week, server_database, wait_for_second


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_attesting_server(tmp_path_factory.mktemp("anomaly-week"), workers=1)
    yield running
    stop_server(running)


def _anomaly_events(server: Server, spiffe_id: str) -> list[AuditEvent]:
    database = server_database(server)
    try:
        with database.reading() as session:
            return list(
                session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.action.startswith("anomaly."))
                    .where(AuditEvent.subject == spiffe_id)
                    .order_by(AuditEvent.seq)
                )
            )
    finally:
        database.close()


def _by_token(server: Server, spiffe_id: str) -> tuple[Any, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = server.request(
        "POST",
        "/v1/svid/x509",
        {
            "attestation": {"type": "join_token", "token": server.join_token(spiffe_id)},
            "csr": csr_pem(key),
        },
    )
    assert status == 201, body
    return key, body


def _renew(server: Server, key: Any, svid: dict[str, Any]) -> tuple[int, Any, Any]:
    """Renewal by proof of possession of ``svid``; returns (status, new key, body)."""
    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_pem(new_key)
    proof = make_proof(svid["chain_pem"], key, "x509-renew", csr.encode())
    status, _, body = server.request("POST", "/v1/svid/x509/renew", {"csr": csr, "proof": proof})
    return status, new_key, body


def _attest_ci(server: Server, repository: str, ref: str) -> tuple[int, Any, Any]:
    token = server.ci.token(
        server.ci.claims(
            "idmint", sub=f"repo:{repository}:ref:{ref}", repository=repository, ref=ref
        )
    )
    key = ec.generate_private_key(ec.SECP256R1())
    status, _, body = server.request(
        "POST",
        "/v1/svid/x509",
        {"attestation": {"type": "oidc", "token": token}, "csr": csr_pem(key)},
    )
    return status, key, body


def _metric(server: Server, name: str, **labels: str) -> float:
    status, _, text = server.request("GET", "/metrics")
    assert status == 200
    body = text.decode() if isinstance(text, bytes) else str(text)
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_no_action_over_a_steady_week_and_after_it(server: Server) -> None:
    entry = server.entry("spiffe://example.org/week/steady", ["join_token:any:true"])
    learn_week(server, entry, jitter=60.0, seed=7)
    learned = server.admin("GET", f"/v1/anomalies/{entry['id']}")
    assert learned["action"] is None and 1900 < learned["samples"] < 2100
    assert 0.15 < learned["rate_per_minute"]["mean"] < 0.25
    assert learned["networks"] == ["127.0.0.0/24"]
    # The week goes on as before, now through the server: fresh attestation
    # and renewals at its usual pace (a few in a minute are within the band).
    key, svid = _by_token(server, entry["spiffe_id"])
    for _ in range(3):
        status, key, svid = _renew(server, key, svid)
        assert status == 201, svid
    shown = server.admin("GET", f"/v1/anomalies/{entry['id']}")
    assert shown["action"] is None and shown["reason"] is None
    # The server went on from the learned week (its own counts are written
    # back after sync_seconds; it never replaces the week with a fresh row).
    assert shown["samples"] >= learned["samples"]
    assert _anomaly_events(server, entry["spiffe_id"]) == []


@pytest.mark.slow
def test_a_burst_after_a_week_is_throttled_then_stepped_up(server: Server) -> None:
    entry = server.entry("spiffe://example.org/week/burst", ["join_token:any:true"])
    learn_week(server, entry)
    # Throttling takes a handful of requests; they must fall in one minute.
    wait_for_second(45)
    key, svid = _by_token(server, entry["spiffe_id"])
    started = datetime.now(UTC).replace(second=0, microsecond=0)
    outcomes: list[tuple[int, Any]] = []
    # About 100 renewals a minute until the next minute has begun.
    while datetime.now(UTC) < started + timedelta(minutes=1, seconds=8):
        status, new_key, body = _renew(server, key, svid)
        outcomes.append((status, body))
        if status == 201:
            key, svid = new_key, body
        time.sleep(0.6)

    statuses = [status for status, _ in outcomes]
    # The attestation and 4 renewals make 5 this minute (the limit): the 6th is throttled.
    assert statuses[:4] == [201] * 4, outcomes[:6]
    assert statuses[4] == 429, outcomes[4]
    throttled = outcomes[4][1]
    assert throttled["type"].endswith("/anomaly-throttled")
    assert re.search(
        r"throttled to 5/min \(rate 6/min vs baseline 0\.2/min \+- [\d.]+ \(limit 5\.0/min\)\)",
        throttled["detail"],
    ), throttled["detail"]
    # Then, in the next minute, asking on past the limit again steps it up:
    # renewal by proof is refused with 401 step-up-required, naming the numbers.
    stepped = [body for status, body in outcomes if status == 401]
    assert stepped, statuses
    assert stepped[0]["type"].endswith("/step-up-required")
    assert "again after being throttled" in stepped[0]["detail"]
    assert "attest afresh" in stepped[0]["detail"]
    first_up = statuses.index(401)
    assert set(statuses[4:first_up]) <= {201, 429} and set(statuses[first_up:]) == {401}
    assert statuses[4:first_up].count(201) == 5  # the new minute's first five pass
    shown = server.admin("GET", f"/v1/anomalies/{entry['id']}")
    assert shown["action"] == "step-up"
    # The burst was not learned as normal.
    assert shown["rate_per_minute"]["mean"] < 0.5
    actions = [event.action for event in _anomaly_events(server, entry["spiffe_id"])]
    assert actions == ["anomaly.throttle", "anomaly.step-up"]
    throttle_event = json.loads(_anomaly_events(server, entry["spiffe_id"])[0].detail)
    assert throttle_event["reason"].startswith("rate 6/min vs baseline 0.2/min +- ")


def test_a_ci_identity_attesting_from_another_ref_is_stepped_up(server: Server) -> None:
    entry = server.entry("spiffe://example.org/week/ci", ["oidc:ci:repository:org/app"])
    main = ("oidc:ci:ref:refs/heads/main", "oidc:ci:repository:org/app")
    learn_week(server, entry, selectors=main)
    # From the ref it always came from: nothing unusual, renewal works.
    status, key, svid = _attest_ci(server, "org/app", "refs/heads/main")
    assert status == 201, svid
    status, key, svid = _renew(server, key, svid)
    assert status == 201, svid
    # From another ref: the evidence itself is valid, so this one is issued...
    status, other_key, other = _attest_ci(server, "org/app", "refs/heads/evil")
    assert status == 201, other
    shown = server.admin("GET", f"/v1/anomalies/{entry['id']}")
    assert shown["action"] == "step-up"
    assert shown["reason"] == (
        "attestation from a new source 'oidc:ci:ref:refs/heads/evil oidc:ci:repository:org/app' "
        "(seen: oidc:ci:ref:refs/heads/main oidc:ci:repository:org/app)"
    )
    # Fresh evidence still works (within the rate limit: every request of
    # this minute, refused or not, counts toward it)...
    status, _, fresh = _attest_ci(server, "org/app", "refs/heads/main")
    assert status == 201, fresh
    # ...but neither the new SVID nor the identity's earlier one may renew by proof.
    for holder, held in ((other_key, other), (key, svid)):
        status, _, refused = _renew(server, holder, held)
        assert status == 401, refused
        assert refused["type"].endswith("/step-up-required")
        assert "refs/heads/evil" in refused["detail"]
    actions = [event.action for event in _anomaly_events(server, entry["spiffe_id"])]
    assert actions == ["anomaly.step-up"]


def test_a_new_audience_for_a_stable_service_is_observed(server: Server) -> None:
    entry = server.entry("spiffe://example.org/week/api", ["oidc:ci:repository:org/api"])
    main = ("oidc:ci:ref:refs/heads/main", "oidc:ci:repository:org/api")
    learn_week(server, entry, selectors=main, audiences=("https://a",), kind="jwt")
    before = _metric(server, "idmint_anomaly_decisions_total", action="observe", signal="audience")

    def jwt(audiences: list[str]) -> tuple[int, Any]:
        token = server.ci.token(
            server.ci.claims(
                "idmint",
                sub="repo:org/api:ref:refs/heads/main",
                repository="org/api",
                ref="refs/heads/main",
            )
        )
        status, _, body = server.request(
            "POST",
            "/v1/svid/jwt",
            {"attestation": {"type": "oidc", "token": token}, "audience": audiences},
        )
        return status, body

    status, body = jwt(["https://a"])
    assert status == 201, body
    assert _anomaly_events(server, entry["spiffe_id"]) == []
    status, body = jwt(["https://a", "https://new"])
    assert status == 201, body  # observed, not refused
    (observed,) = _anomaly_events(server, entry["spiffe_id"])
    assert observed.action == "anomaly.observe"
    detail = json.loads(observed.detail)
    assert detail["signals"] == ["audience"]
    assert detail["reason"] == "new audience(s) ['https://new'] (seen: https://a)"
    after = _metric(server, "idmint_anomaly_decisions_total", action="observe", signal="audience")
    assert after == before + 1
    assert server.admin("GET", f"/v1/anomalies/{entry['id']}")["action"] is None
    # Learned: the same audience again is not news.
    status, body = jwt(["https://new"])
    assert status == 201, body
    assert len(_anomaly_events(server, entry["spiffe_id"])) == 1


def test_refusals_far_above_the_baseline_are_observed(server: Server) -> None:
    entry = server.entry(
        "spiffe://example.org/week/refused", ["oidc:ci:repository:org/probe"], audiences=["a"]
    )
    main = ("oidc:ci:ref:refs/heads/main", "oidc:ci:repository:org/probe")
    learn_week(server, entry, selectors=main, audiences=("a",), kind="jwt")
    statuses, problems = [], []
    wait_for_second(50)  # the six refusals must fall in one minute
    for _ in range(6):
        token = server.ci.token(
            server.ci.claims(
                "idmint",
                sub="repo:org/probe:ref:refs/heads/main",
                repository="org/probe",
                ref="refs/heads/main",
            )
        )
        status, _, body = server.request(
            "POST",
            "/v1/svid/jwt",
            {"attestation": {"type": "oidc", "token": token}, "audience": ["not-allowed"]},
        )
        statuses.append(status)
        problems.append(body)
    assert set(statuses) == {403}, problems[0]
    assert "does not allow audience(s) ['not-allowed']" in problems[0]["detail"]
    (observed,) = _anomaly_events(server, entry["spiffe_id"])
    detail = json.loads(observed.detail)
    assert observed.action == "anomaly.observe" and detail["signals"] == ["refusals"]
    assert detail["reason"] == "refusals 6/min vs baseline 0.0/min +- 0.0 (limit 5.0/min)"
