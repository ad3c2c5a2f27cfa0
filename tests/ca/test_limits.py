"""Rate limits (idmint.ca.api.limits) on a real redis-server: shared counts, costs, fallback.

Two Limiter objects on one Redis stand for two workers (or replicas): each
is what one process builds from the same ``[limits]`` section.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask

from idmint.attestation.base import AttestationFailed
from idmint.ca.api import limits as api_limits
from idmint.ca.api.limits import Limiter, RateLimited, RateLimitStoreUnavailable
from idmint.ca.config import LimitsConfig, load
from idmint.errors import ConfigError
from tests.redis_server import RedisServer, redis_server


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    try:
        with redis_server() as server:
            yield server
    except RuntimeError as exc:  # not installed: a failure, CI must run these
        pytest.fail(str(exc))


@pytest.fixture
def running(redis: RedisServer) -> Iterator[RedisServer]:
    """``redis`` up and empty for this test (a previous one may have stopped it)."""
    if redis.process is None:
        redis.start()
    redis.flush()
    yield redis
    if redis.process is None:
        redis.start()


def _config(redis: RedisServer, **rules: str | int | float) -> LimitsConfig:
    base = LimitsConfig(storage=redis.url, per_address="", per_identity="")
    return replace(base, **rules)  # type: ignore[arg-type]


def _allowed(limiter: Limiter, level: str, key: str) -> bool:
    try:
        limiter.hit(level, key)
    except RateLimited:
        return False
    return True


def test_two_processes_on_one_redis_share_one_budget(running: RedisServer) -> None:
    config = _config(running, per_identity="10/minute")
    first, second = Limiter(config, "example.org"), Limiter(config, "example.org")
    results = [
        _allowed((first, second)[n % 2], "identity", "spiffe://example.org/a") for n in range(14)
    ]
    assert results == [True] * 10 + [False] * 4
    # Another identity has its own budget; another trust domain its own keys.
    assert _allowed(first, "identity", "spiffe://example.org/b")
    assert _allowed(Limiter(config, "other.org"), "identity", "spiffe://example.org/a")


def test_memory_storage_counts_per_process(running: RedisServer) -> None:
    config = LimitsConfig(per_address="", per_identity="3/minute")
    first, second = Limiter(config, "example.org"), Limiter(config, "example.org")
    assert [_allowed(first, "identity", "x") for _ in range(4)] == [True] * 3 + [False]
    assert _allowed(second, "identity", "x")  # its own window: why a fleet wants Redis


def test_refusal_names_level_rule_and_retry_after(running: RedisServer) -> None:
    limiter = Limiter(_config(running, per_address="2/minute"), "example.org")
    limiter.hit("address", "192.0.2.1")
    limiter.hit("address", "192.0.2.1")
    with pytest.raises(RateLimited) as refused:
        limiter.hit("address", "192.0.2.1")
    assert refused.value.level == "address"
    assert refused.value.rule == "2 per 1 minute"
    assert 58 <= refused.value.retry_after <= 60  # the window frees its first hit in ~60 s
    assert "192.0.2.1" in str(refused.value) and "retry in" in str(refused.value)


def test_several_rules_on_one_level_all_hold(running: RedisServer) -> None:
    limiter = Limiter(_config(running, trust_domain="100/hour;3/second"), "example.org")
    assert [_allowed(limiter, "trust_domain", "total") for _ in range(4)] == [True] * 3 + [False]
    time.sleep(1.1)
    assert _allowed(limiter, "trust_domain", "total")


def test_failed_attestations_cost_more(running: RedisServer) -> None:
    config = _config(running, attestation="30/minute", attestation_failure_cost=10)
    app = Flask("test")
    api_limits.init_app(app, Limiter(config, "example.org"))

    def attempt(address: str, fails: bool) -> str:
        with app.test_request_context(environ_base={"REMOTE_ADDR": address}):
            try:
                with api_limits.attestation_attempt():
                    if fails:
                        raise AttestationFailed("bad token")
            except AttestationFailed:
                return "failed"
            except RateLimited:
                return "limited"
        return "ok"

    # A guesser: three failures spend 30, the fourth try is refused unseen.
    assert [attempt("198.51.100.7", True) for _ in range(4)] == ["failed"] * 3 + ["limited"]
    # An honest client from elsewhere gets 30 successful attempts.
    assert all(attempt("198.51.100.8", False) == "ok" for _ in range(30))
    assert attempt("198.51.100.8", False) == "limited"


def test_store_down_open_local_then_back_to_shared(running: RedisServer) -> None:
    config = _config(running, per_identity="5/minute", storage_timeout=0.2)
    first, second = Limiter(config, "example.org"), Limiter(config, "example.org")
    assert _allowed(first, "identity", "a") and _allowed(second, "identity", "a")
    running.stop()
    began = time.monotonic()
    # Each process counts alone now: 5 each, none refused for the store's sake.
    assert [_allowed(first, "identity", "a") for _ in range(6)] == [True] * 5 + [False]
    assert first.degraded
    assert time.monotonic() - began < 2  # no redis-py retry sleeps on the request path
    running.start()
    time.sleep(api_limits.PROBE_FIRST + 0.1)
    # The first call after the back-off probes the store and stays there.
    assert _allowed(first, "identity", "fresh")
    assert not first.degraded
    for _ in range(4):
        first.hit("identity", "fresh")
    assert not _allowed(second, "identity", "fresh")  # shared again: second sees first's 5


def test_a_dead_store_is_probed_with_back_off_not_per_request(running: RedisServer) -> None:
    from prometheus_client import REGISTRY

    def errors() -> float:
        return REGISTRY.get_sample_value("idmint_rate_limit_store_errors_total") or 0.0

    limiter = Limiter(_config(running, per_identity="100000/minute"), "example.org")
    limiter.hit("identity", "a")
    running.stop()
    before, began, hits = errors(), time.monotonic(), 0
    while time.monotonic() - began < 2.5:
        limiter.hit("identity", "a")
        hits += 1
        time.sleep(0.005)
    # Tried at once, again after 1 s, next after 2 s more (t = 3 s): two
    # failures for a few hundred requests.
    assert hits > 100
    assert errors() - before == 2


def test_store_down_closed_refuses_with_503(running: RedisServer) -> None:
    config = _config(running, per_address="100/minute", on_storage_error="closed")
    limiter = Limiter(config, "example.org")
    limiter.hit("address", "a")
    running.stop()
    with pytest.raises(RateLimitStoreUnavailable) as refused:
        limiter.hit("address", "a")
    assert refused.value.retry_after >= 1
    running.start()
    time.sleep(api_limits.PROBE_FIRST + 0.1)
    limiter.hit("address", "a")
    assert not limiter.degraded


def test_levels_that_are_off_never_touch_the_store(running: RedisServer) -> None:
    limiter = Limiter(_config(running), "example.org")
    running.stop()
    for level in ("address", "identity", "trust_domain", "attestation"):
        limiter.hit(level, "k")
    assert not limiter.degraded


# -- configuration -----------------------------------------------------------


def _data_dir(tmp_path: Path, limits: str) -> Path:
    (tmp_path / "idmint.toml").write_text(
        f'[ca]\ntrust_domain = "example.org"\n\n[hsm]\ntoken_label = "x"\n\n[limits]\n{limits}'
    )
    return tmp_path


def test_config_defaults_keep_the_old_rule(tmp_path: Path) -> None:
    config = load(_data_dir(tmp_path, "")).limits
    assert config == LimitsConfig()
    assert (config.per_address, config.per_identity) == ("600/minute", "600/minute")
    assert (config.trust_domain, config.attestation) == ("", "")
    assert config.storage == "memory://" and config.on_storage_error == "open-local"


def test_config_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _data_dir(
        tmp_path,
        'storage = "redis://127.0.0.1:6390/2"\nper_identity = "10/minute"\nper_address = ""\n'
        'attestation = "20/minute"\nattestation_failure_cost = 5\n',
    )
    monkeypatch.setenv("IDMINT_LIMITS_ON_STORAGE_ERROR", "closed")
    monkeypatch.setenv("IDMINT_LIMITS_TRUST_DOMAIN", "1000/second")
    config = load(directory).limits
    assert config.storage == "redis://127.0.0.1:6390/2"
    assert (config.per_identity, config.per_address) == ("10/minute", "")
    assert (config.attestation, config.attestation_failure_cost) == ("20/minute", 5)
    assert (config.on_storage_error, config.trust_domain) == ("closed", "1000/second")


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('per_identity = "ten a minute"', "per_identity = 'ten a minute'"),
        ('strategy = "leaky"', "strategy = 'leaky'"),
        ('on_storage_error = "open"', "on_storage_error = 'open'"),
        ('storage = "localhost:6379"', "not a storage URI"),
        ("attestation_failure_cost = 0", "attestation_failure_cost"),
        ('per_idnetity = "1/second"', "no key 'per_idnetity'"),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, line: str, named: str) -> None:
    with pytest.raises(ConfigError, match="limits") as refused:
        load(_data_dir(tmp_path, line + "\n"))
    assert named in str(refused.value)


def test_unknown_or_unusable_storage_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nosuch"):
        Limiter(LimitsConfig(storage=f"nosuch-{uuid.uuid4().hex[:4]}://x"), "example.org")
    # Without its client library (pymemcache here) or, with it, with the moving
    # window that limits' memcached storage lacks: either way named up front.
    with pytest.raises(ConfigError, match=r"memcached://.*(pymemcache|fixed-window)"):
        Limiter(LimitsConfig(storage="memcached://127.0.0.1:1"), "example.org")


def test_deprecated_rate_limit_option_sets_address_and_identity(tmp_path: Path) -> None:
    from idmint.ca.server.app import with_rate_limit

    config = load(_data_dir(tmp_path, 'per_identity = "10/minute"\ntrust_domain = "9/second"\n'))
    limits = with_rate_limit(config, "5/second").limits
    assert (limits.per_address, limits.per_identity, limits.trust_domain) == (
        "5/second",
        "5/second",
        "9/second",
    )
    off = with_rate_limit(config, "none").limits
    assert (off.per_address, off.per_identity, off.trust_domain) == ("", "", "9/second")
    with pytest.raises(ConfigError, match="--rate-limit"):
        with_rate_limit(config, "lots")
