"""Rate limits through real servers: two replicas x two workers on one PostgreSQL and one Redis.

The per-identity rule holds for the fleet, not per process; with Redis
stopped the configured fallback answers (never a 500); with Redis back the
count is shared again.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.pg import fresh_database
from tests.redis_server import RedisServer, redis_server
from tests.server.conftest import Server, clean_env, csr_pem, start_server

IDMINT = [str(Path(sys.executable).parent / "idmint")]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    try:
        with redis_server() as server:
            yield server
    except RuntimeError as exc:  # not installed: a failure, CI must run these
        pytest.fail(str(exc))


def _limits(redis: RedisServer, **extra: str) -> str:
    rules = {
        "storage": redis.url,
        "per_identity": "10/minute",
        # High enough never to trip; on, so every request looks at the store.
        "per_address": "100000/minute",
        **extra,
    }
    return "\n[limits]\n" + "".join(f'{k} = "{v}"\n' for k, v in rules.items())


@pytest.fixture(scope="module")
def fleet(
    pg_server: str, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Replicas A and B (two workers each) on one database, one token, one Redis."""
    base = tmp_path_factory.mktemp("fleet")
    with fresh_database(pg_server) as url:
        first = base / "a"
        subprocess.run(
            [*IDMINT, "init", "--data-dir", str(first), "--trust-domain", "example.org",
             "--database-url", url],
            check=True, capture_output=True, env=clean_env(),
        )  # fmt: skip
        config = (first / "idmint.toml").read_text() + _limits(redis)
        (first / "idmint.toml").write_text(config)
        second = base / "b"
        second.mkdir()
        config = config.replace('pin_file = "hsm/', f'pin_file = "{first}/hsm/')
        config = config.replace('softhsm_conf = "hsm/', f'softhsm_conf = "{first}/hsm/')
        (second / "idmint.toml").write_text(config)
        a = start_server(first, base, "a", workers=2, rate_limit=None)
        b = start_server(second, base, "b", workers=2, rate_limit=None)
        try:
            yield a, b
        finally:
            for server in (a, b):
                server.process.terminate()
                server.process.wait(timeout=20)


def _requests(servers: list[Server], spiffe_id: str, count: int) -> list[tuple[int, Any, Any]]:
    """``count`` X509-SVID requests at once for ``spiffe_id``, spread over ``servers``.

    Each has a join token of its own, on a new connection (so the kernel
    spreads them over the workers).
    """
    tokens = [servers[0].join_token(spiffe_id) for _ in range(count)]
    csr = csr_pem(ec.generate_private_key(ec.SECP256R1()))
    results: list[tuple[int, Any, Any]] = []
    start = threading.Barrier(count)

    def one(n: int) -> None:
        body = {"attestation": {"type": "join_token", "token": tokens[n]}, "csr": csr}
        start.wait()
        status, headers, answer = servers[n % len(servers)].request("POST", "/v1/svid/x509", body)
        results.append((status, headers, answer))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _metric(server: Server, name: str) -> float | None:
    _, _, text = server.request("GET", "/metrics")
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text.decode(), re.MULTILINE)
    return float(found.group(1)) if found else None


def _worker_pids(server: Server) -> set[str]:
    """Processes that wrote a counter, the master aside: the workers that answered."""
    return {
        path.name.split("_")[1].split(".")[0]
        for path in (server.data_dir / "server" / "metrics").glob("counter_*.db")
    } - {str(server.process.pid)}


def test_identity_rule_holds_across_replicas_and_workers(fleet: tuple[Server, Server]) -> None:
    a, b = fleet
    spiffe_id = "spiffe://example.org/limits/web"
    a.entry(spiffe_id, ["join_token:any:true"])
    results = _requests([a, b], spiffe_id, 30)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [201] * 10 + [429] * 20, statuses
    for status, headers, body in results:
        if status != 429:
            continue
        assert headers["content-type"].startswith("application/problem+json")
        assert body["type"].endswith("/rate-limited") and body["status"] == 429
        assert body["level"] == "identity" and body["rule"] == "10 per 1 minute"
        assert 1 <= int(headers["retry-after"]) <= 60
        assert int(headers["retry-after"]) == body["retry_after"]
        assert spiffe_id in body["detail"]
    # Four processes counted together, not ten each.
    assert len(_worker_pids(a)) == 2 and len(_worker_pids(b)) == 2
    refused = (_metric(a, 'idmint_rate_limited_total{level="identity"}') or 0) + (
        _metric(b, 'idmint_rate_limited_total{level="identity"}') or 0
    )
    assert refused == 20


def test_redis_stopped_falls_back_locally_and_recovers(
    fleet: tuple[Server, Server], redis: RedisServer
) -> None:
    a, b = fleet
    before = "spiffe://example.org/limits/before"
    a.entry(before, ["join_token:any:true"])
    assert sorted(s for s, _, _ in _requests([a, b], before, 4)) == [201] * 4
    redis.stop()
    try:
        during = "spiffe://example.org/limits/during"
        a.entry(during, ["join_token:any:true"])
        results = _requests([a, b], during, 12)
        # Each worker counts alone (10 each): 12 over four workers all pass.
        assert sorted(s for s, _, _ in results) == [201] * 12, results
        assert (_metric(a, "idmint_rate_limit_store_down") or 0) + (
            _metric(b, "idmint_rate_limit_store_down") or 0
        ) >= 1
        for server in (a, b):
            log = (server.data_dir.parent / f"{server.data_dir.name}.log").read_text()
            # Logged once per worker, not once per request.
            assert log.count("does not answer") <= 2
            assert "Traceback" not in log
    finally:
        redis.start()
    # Back: every worker's next request after its back-off probes and returns.
    deadline = time.monotonic() + 60
    while any(_metric(s, "idmint_rate_limit_store_down") for s in (a, b)):
        assert time.monotonic() < deadline, "the servers never went back to Redis"
        for server in (a, b):
            for _ in range(4):
                assert server.request("GET", "/v1/nonce")[0] == 200
        time.sleep(0.5)
    after = "spiffe://example.org/limits/after"
    a.entry(after, ["join_token:any:true"])
    statuses = sorted(s for s, _, _ in _requests([a, b], after, 14))
    assert statuses == [201] * 10 + [429] * 4, statuses
    for server in (a, b):
        log = (server.data_dir.parent / f"{server.data_dir.name}.log").read_text()
        assert "answers again" in log


def test_fail_closed_answers_503_with_retry_after(redis: RedisServer, tmp_path: Path) -> None:
    from tests.server.conftest import init_data_dir

    if redis.process is None:
        redis.start()
    data = init_data_dir(tmp_path / "data")
    with (data / "idmint.toml").open("a") as config:
        config.write(_limits(redis, on_storage_error="closed"))
    server = start_server(data, tmp_path, workers=2, rate_limit=None)
    try:
        spiffe_id = "spiffe://example.org/limits/closed"
        server.entry(spiffe_id, ["join_token:any:true"])
        assert [s for s, _, _ in _requests([server], spiffe_id, 2)] == [201, 201]
        redis.stop()
        try:
            results = _requests([server], spiffe_id, 6)
            for status, headers, body in results:
                assert status == 503, body
                assert body["type"].endswith("/rate-limit-store-unavailable")
                assert int(headers["retry-after"]) >= 1
        finally:
            redis.start()
        deadline = time.monotonic() + 60
        while True:
            statuses = [s for s, _, _ in _requests([server], spiffe_id, 2)]
            if statuses == [201, 201]:
                break
            assert set(statuses) <= {201, 503}, statuses
            assert time.monotonic() < deadline, "the server never went back to Redis"
            time.sleep(1)
    finally:
        server.process.terminate()
        server.process.wait(timeout=20)
