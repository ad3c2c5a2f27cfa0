"""Rate limits at four levels, counted in one store that every worker and replica shares.

The levels (``[limits]`` in idmint.toml, see idmint.ca.config.LimitsConfig):

- ``address``: every API request, by source address;
- ``identity``: requests by one attested identity, the SPIFFE ID it gets or
  proves (checked after attestation, before single-use evidence is spent,
  so a refused request does not burn a join token);
- ``trust_domain``: issuance for the whole trust domain;
- ``attestation``: attestation attempts by source address, where a failed
  attempt costs ``attestation_failure_cost``: whoever guesses join tokens
  runs dry long before an honest client that fails now and then.

The counting is the ``limits`` library's (its storage URIs and strategies).
With ``memory://`` each worker counts alone; with Redis (or memcached) the
rule holds for the whole fleet. When the shared store does not answer, the
configured fallback applies (``open-local``: a window in this process,
``closed``: 503) until a probe, spaced by exponential back-off, finds it
answering again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, current_app, request
from limits import RateLimitItem, parse_many, strategies
from limits.errors import ConfigurationError, StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string

from idmint.attestation.base import AttestationFailed
from idmint.ca.api import metrics
from idmint.ca.api.problems import problem, problem_for
from idmint.ca.config import LIMIT_KEYS, LimitsConfig
from idmint.ca.errors import RateLimited, RateLimitStoreUnavailable
from idmint.errors import ConfigError

log = logging.getLogger("idmint.limits")
T = TypeVar("T")

STRATEGIES: dict[str, type[strategies.RateLimiter]] = {
    "moving-window": strategies.MovingWindowRateLimiter,
    "fixed-window": strategies.FixedWindowRateLimiter,
    "sliding-window-counter": strategies.SlidingWindowCounterRateLimiter,
}

#: Seconds between probes of a store that stopped answering: doubled after
#: each failed probe up to the maximum, so a dead store costs one try per
#: interval per worker, not one per request.
PROBE_FIRST = 1.0
PROBE_MAX = 15.0


@dataclass(frozen=True)
class Refusal:
    """One request refused by a rule, as the audit hook receives it."""

    level: str
    rule: str
    key: str
    source: str


#: Called for every refusal, after it is counted in ``idmint_rate_limited_total``.
RefusalHook = Callable[[Refusal, RateLimited], None]


def audit_if_bounded(refusal: Refusal, error: RateLimited) -> None:
    """Audit a refusal through the issuer when its refusal audit is bounded.

    Refusals are anonymous traffic: one chained row each would let anyone
    grow the audit chain. Issue 12 gives the issuer a refusal log aggregated
    per source and minute (``issuer.refusals``); with it, rate-limit trips
    are audited like other refusals. Without it (an issuer that chains every
    refusal), they are counted in metrics only.
    """
    from idmint.ca.api.context import state  # context imports this module

    issuer = state().service.issuer
    if getattr(issuer, "refusals", None) is not None:
        issuer.refuse(f"rate-limit.{refusal.level}", refusal.source, error, ())


def _storage(config: LimitsConfig) -> Storage:
    scheme = config.storage.split("://", 1)[0]
    options: dict[str, Any] = {}
    if scheme.startswith("redis"):
        try:
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ConfigError(
                f"[limits] storage = {_redacted(config.storage)!r} needs the redis client: "
                "pip install 'idmint[redis]'"
            ) from None
        options = {
            "socket_timeout": config.storage_timeout,
            "socket_connect_timeout": config.storage_timeout,
            # redis-py retries a failed command 3 times with back-off of up to
            # 1+2+4 s by default: a request would wait that long for a dead
            # store. Our own probe and back-off (Limiter._run) decide instead.
            "retry": Retry(NoBackoff(), 0),
        }
    elif scheme.startswith("memcached"):
        options = {"connect_timeout": config.storage_timeout, "timeout": config.storage_timeout}
    try:
        store = storage_from_string(config.storage, **options)
    except ConfigurationError as exc:
        raise ConfigError(f"[limits] storage = {_redacted(config.storage)!r}: {exc}") from None
    if not isinstance(store, Storage):  # async+redis:// and the like
        raise ConfigError(
            f"[limits] storage = {_redacted(config.storage)!r} is an asyncio storage; "
            "drop the 'async+'"
        )
    return store


class Limiter:
    """The rules of one server and the windows that count them."""

    def __init__(
        self, config: LimitsConfig, trust_domain: str, on_refusal: RefusalHook | None = None
    ) -> None:
        self.config = config
        self.trust_domain = trust_domain
        self.on_refusal = on_refusal
        self.rules: dict[str, list[RateLimitItem]] = {
            level: parse_many(config.rule(level)) for level in LIMIT_KEYS if config.rule(level)
        }
        strategy = STRATEGIES[config.strategy]
        self.local = strategy(MemoryStorage())
        self.shared = self.local
        self._errors: tuple[type[BaseException], ...] = ()
        if self.rules and not config.storage.startswith("memory://"):
            store = _storage(config)
            try:
                self.shared = strategy(store)
            except NotImplementedError:
                raise ConfigError(
                    f"[limits] strategy = {config.strategy!r} does not work with "
                    f'{config.storage.split("://")[0]}://; use "fixed-window" or '
                    '"sliding-window-counter"'
                ) from None
            base = store.base_exceptions
            self._errors = (
                StorageError,
                OSError,
                *(base if isinstance(base, tuple) else (base,)),
            )
        self._lock = threading.Lock()
        self._probing = threading.Lock()
        self._down = False
        self._next_probe = 0.0
        self._backoff = PROBE_FIRST

    def _identifiers(self, level: str, key: str) -> tuple[str, ...]:
        # The strategy is part of the key: each keeps a different Redis type
        # (list, counter), and a changed strategy must not meet the old keys
        # (WRONGTYPE would read as a store that does not answer).
        return ("idmint", self.config.strategy, self.trust_domain, level, key)

    @property
    def degraded(self) -> bool:
        """Whether the shared store is treated as down (counting falls back)."""
        return self._down

    def hit(self, level: str, key: str, cost: int = 1, source: str = "-") -> None:
        """Count ``cost`` for ``key`` at ``level``; raise RateLimited past any of its rules."""
        items = self.rules.get(level)
        if not items:
            return
        identifiers = self._identifiers(level, key)

        def count(window: strategies.RateLimiter) -> tuple[RateLimitItem, float] | None:
            for item in items:
                if not window.hit(item, *identifiers, cost=cost):
                    return item, window.get_window_stats(item, *identifiers).reset_time
            return None

        refused = self._run(count)
        if refused is None:
            return
        item, reset_at = refused
        retry_after = max(1, math.ceil(reset_at - time.time()))
        rule = str(item)
        metrics.RATE_LIMITED.labels(level).inc()
        error = RateLimited(level, rule, key, retry_after)
        if self.on_refusal is not None:
            self.on_refusal(Refusal(level, rule, key, source), error)
        raise error

    def charge(self, level: str, key: str, cost: int) -> None:
        """Take up to ``cost`` more from ``key``'s budget, never refusing (already answered).

        With the store down and ``on_storage_error = "closed"`` nothing is
        taken: the caller's own error stands.
        """
        identifiers = self._identifiers(level, key)

        def take(window: strategies.RateLimiter) -> None:
            for item in self.rules.get(level, ()):
                if not window.hit(item, *identifiers, cost=cost):
                    left = window.get_window_stats(item, *identifiers).remaining
                    if left > 0:
                        window.hit(item, *identifiers, cost=min(cost, left))

        try:
            self._run(take)
        except RateLimitStoreUnavailable:
            pass

    # -- the shared store and its fallback -----------------------------------

    def _run(self, count: Callable[[strategies.RateLimiter], T]) -> T:
        if self.shared is self.local:
            return count(self.local)
        probing = False
        if self._down:
            # One thread per process probes when the back-off is over; the
            # others keep to the fallback meanwhile.
            if time.monotonic() < self._next_probe or not self._probing.acquire(blocking=False):
                return self._fallback(count)
            probing = True
        try:
            result = count(self.shared)
        except self._errors as exc:
            self._failed(exc, probing)
            return self._fallback(count)
        finally:
            if probing:
                self._probing.release()
        if probing:
            self._recovered()
        return result

    def _fallback(self, count: Callable[[strategies.RateLimiter], T]) -> T:
        if self.config.on_storage_error == "closed":
            metrics.RATE_LIMIT_STORE_REFUSED.inc()
            wait = max(1, math.ceil(self._next_probe - time.monotonic()))
            raise RateLimitStoreUnavailable(wait)
        return count(self.local)

    def _failed(self, error: BaseException, probing: bool) -> None:
        with self._lock:
            metrics.RATE_LIMIT_STORE_ERRORS.inc()
            if not self._down:
                self._down = True
                self._backoff = PROBE_FIRST
                metrics.RATE_LIMIT_STORE_DOWN.set(1)
                # Once per outage (per process), not per request.
                log.warning(
                    "rate-limit store %s does not answer (%s: %s); %s until it does",
                    _redacted(self.config.storage),
                    type(error).__name__,
                    error,
                    "counting in this process"
                    if self.config.on_storage_error == "open-local"
                    else "refusing limited requests with 503",
                )
            elif probing:
                self._backoff = min(self._backoff * 2, PROBE_MAX)
            else:
                return  # in flight when the store went: the outage is already timed
            self._next_probe = time.monotonic() + self._backoff

    def _recovered(self) -> None:
        with self._lock:
            if self._down:
                self._down = False
                self._backoff = PROBE_FIRST
                metrics.RATE_LIMIT_STORE_DOWN.set(0)
                log.warning(
                    "rate-limit store %s answers again; counting there",
                    _redacted(self.config.storage),
                )


def _redacted(uri: str) -> str:
    """The storage URI without a password (redis://:secret@host...)."""
    scheme, _, rest = uri.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}://{rest}"


# -- Flask --------------------------------------------------------------------


def init_app(app: Flask, limiter: Limiter) -> None:
    """Bind ``limiter`` to ``app``; its refusals become 429 (503) problem documents."""
    app.extensions["idmint.limits"] = limiter
    app.register_error_handler(RateLimited, _answer)
    app.register_error_handler(RateLimitStoreUnavailable, _answer)


def _answer(error: RateLimited | RateLimitStoreUnavailable) -> Response:
    # Not from_error(): that logs every 5xx, and a store that is down is
    # logged once per outage (Limiter._failed), not once per request.
    found = problem_for(type(error))
    title = (type(error).__doc__ or type(error).__name__).strip().splitlines()[0]
    extra = (
        {"level": error.level, "rule": error.rule, "retry_after": error.retry_after}
        if isinstance(error, RateLimited)
        else {}
    )
    response = problem(found.status, title, str(error), found.type, **extra)
    response.headers["Retry-After"] = str(error.retry_after)
    return response


def limiter() -> Limiter:
    """The current app's limiter."""
    found: Limiter = current_app.extensions["idmint.limits"]
    return found


def _source() -> str:
    return request.remote_addr or "-"


def limit_address() -> None:
    """Count this request against its source address."""
    source = _source()
    limiter().hit("address", source, source=source)


def limit_identity(identity: str) -> None:
    """Count this request against the identity it attested, then the trust domain."""
    found = limiter()
    found.hit("identity", identity, source=_source())
    found.hit("trust_domain", "total", source=_source())


@contextmanager
def attestation_attempt() -> Iterator[None]:
    """Count an attestation attempt by this source; a failed one costs more."""
    found, source = limiter(), _source()
    found.hit("attestation", source, source=source)
    try:
        yield
    except AttestationFailed:
        extra = found.config.attestation_failure_cost - 1
        if extra and "attestation" in found.rules:
            found.charge("attestation", source, extra)
        raise
