"""The data directory and its configuration file (TOML) with ``IDMINT_*`` overrides.

A data directory holds everything the embedded default needs::

    DIR/idmint.toml          this configuration
    DIR/hsm/                 the SoftHSM token (softhsm2.conf, tokens/, PIN files)
    DIR/idmint.db            the SQLite database

Any setting can be overridden by an environment variable named
``IDMINT_<SECTION>_<KEY>`` (``IDMINT_HSM_MODULE``, ``IDMINT_DATABASE_URL``...).
The HSM PIN is never a setting: it comes from ``IDMINT_HSM_PIN`` or the PIN
file named by ``hsm.pin_file``.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from idmint.errors import ConfigError
from idmint.hsm.config import HSMConfig

CONFIG_NAME = "idmint.toml"
DATABASE_NAME = "idmint.db"
HSM_DIR = "hsm"
DATA_DIR_ENV = "IDMINT_DATA_DIR"


#: ``[limits]`` levels (the names used in metrics and answers) and their keys in the file.
LIMIT_KEYS = {
    "address": "per_address",
    "identity": "per_identity",
    "trust_domain": "trust_domain",
    "attestation": "attestation",
}
LIMIT_STRATEGIES = ("moving-window", "fixed-window", "sliding-window-counter")
ON_STORAGE_ERROR = ("open-local", "closed")


@dataclass(frozen=True)
class LimitsConfig:
    """The ``[limits]`` section: where the counters live and the rule of each level.

    A rule is text the ``limits`` library parses (``"10/minute"``, several
    joined by ``;``); an empty rule turns its level off.
    """

    #: A ``limits`` storage URI: ``memory://`` (one process), ``redis://``,
    #: ``redis+sentinel://``, ``memcached://`` (shared by workers and replicas).
    storage: str = "memory://"
    strategy: str = "moving-window"
    #: Every API request, by source address (the default of ``--rate-limit``).
    per_address: str = "600/minute"
    #: Requests by one attested identity: the SPIFFE ID it gets or proves.
    per_identity: str = "600/minute"
    #: Issuance for the whole trust domain, by every identity together.
    trust_domain: str = ""
    #: Attestation attempts by source address; a failed one costs
    #: ``attestation_failure_cost`` (a guesser of join tokens runs dry first).
    attestation: str = ""
    attestation_failure_cost: int = 10
    #: When the shared store does not answer: count in this process
    #: (``open-local``) or refuse with 503 (``closed``).
    on_storage_error: str = "open-local"
    #: Seconds to wait for the shared store before treating it as down.
    storage_timeout: float = 0.25

    def rule(self, level: str) -> str:
        """The rule text of ``level`` (a key of LIMIT_KEYS); empty when it is off."""
        return str(getattr(self, LIMIT_KEYS[level]))

    def with_rate_limit(self, rule: str | None, where: str = "--rate-limit") -> LimitsConfig:
        """These limits with the old single ``rate_limit`` as per_address and per_identity.

        ``None`` or ``"none"`` turns both off (``idmint server --rate-limit none``).
        """
        from dataclasses import replace

        text = "" if rule is None or rule.strip().lower() == "none" else rule.strip()
        made = replace(self, per_address=text, per_identity=text)
        made.check(where)
        return made

    def check(self, where: str) -> None:
        """Raise ConfigError naming the key that is wrong."""
        from limits import parse_many

        for key in LIMIT_KEYS.values():
            text = str(getattr(self, key))
            if not text:
                continue
            try:
                parse_many(text)
            except ValueError:
                raise ConfigError(
                    f"{where}: [limits] {key} = {text!r} is not a rate limit; write it as "
                    'COUNT/PERIOD (for example "10/minute" or "100/hour;10/minute"), '
                    'or "" to turn it off'
                ) from None
        if self.strategy not in LIMIT_STRATEGIES:
            raise ConfigError(
                f"{where}: [limits] strategy = {self.strategy!r}; use one of "
                + ", ".join(LIMIT_STRATEGIES)
            )
        if self.on_storage_error not in ON_STORAGE_ERROR:
            raise ConfigError(
                f"{where}: [limits] on_storage_error = {self.on_storage_error!r}; use "
                '"open-local" (count in each process while the store is down) or "closed" (503)'
            )
        if "://" not in self.storage:
            raise ConfigError(
                f"{where}: [limits] storage = {self.storage!r} is not a storage URI "
                "(memory://, redis://HOST:PORT/N, redis+sentinel://..., memcached://HOST:PORT)"
            )
        if self.attestation_failure_cost < 1:
            raise ConfigError(f"{where}: [limits] attestation_failure_cost must be 1 or more")
        if not self.storage_timeout > 0:
            raise ConfigError(f"{where}: [limits] storage_timeout must be a positive number")


def _limits(section: dict[str, Any], where: str) -> LimitsConfig:
    known = {f.name for f in fields(LimitsConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(
            f"{where}: [limits] has no key {unknown[0]!r}; the keys are " + ", ".join(sorted(known))
        )
    defaults = LimitsConfig()

    def text(key: str) -> str:
        value = section.get(key, getattr(defaults, key))
        return "" if value is None or str(value).strip().lower() == "none" else str(value).strip()

    try:
        timeout = float(section.get("storage_timeout", defaults.storage_timeout))
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: [limits] storage_timeout must be a number of seconds"
        ) from None
    made = LimitsConfig(
        storage=text("storage") or defaults.storage,
        strategy=text("strategy"),
        per_address=text("per_address"),
        per_identity=text("per_identity"),
        trust_domain=text("trust_domain"),
        attestation=text("attestation"),
        attestation_failure_cost=_int(
            section, "attestation_failure_cost", defaults.attestation_failure_cost, where
        ),
        on_storage_error=text("on_storage_error"),
        storage_timeout=timeout,
    )
    made.check(where)
    return made


@dataclass(frozen=True)
class CAConfig:
    """Settings of one trust domain served from one data directory."""

    data_dir: Path
    trust_domain: str
    database_url: str
    hsm: HSMConfig
    root_key_type: str = "ec-p256"
    root_lifetime_days: int = 365
    intermediate_key_type: str = "ec-p256"
    intermediate_lifetime_hours: int = 24
    jwt_algorithm: str = "ES256"
    jwt_lifetime_hours: int = 24
    #: ``iss`` of JWT-SVIDs and the base of the OIDC discovery document.
    issuer_url: str = "https://127.0.0.1:8443"
    #: How long issuers may serve entries and authorities from memory.
    cache_seconds: float = 1.0
    crl_url: str | None = None
    ocsp_url: str | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: Seconds any wait for the database may take before the request gets a
    #: 503 (``[database] timeout``): SQLite's busy timeout, PostgreSQL's
    #: lock and connect timeouts.
    database_timeout: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    def attestors(self) -> list[str]:
        """The attestation types served: join tokens always; the others when configured."""
        section = self.extra.get("attestation") or {}
        return ["join_token", *(k for k in ("oidc", "k8s_psat", "x509pop") if section.get(k))]


def default_database_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / DATABASE_NAME).resolve()}"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # TOML basic strings share JSON's escapes for everything we write.
    return json.dumps(str(value))


def render(sections: dict[str, dict[str, object]]) -> str:
    """A TOML document from plain sections of scalars (None values omitted)."""
    lines = ["# idmint configuration; IDMINT_<SECTION>_<KEY> overrides any key."]
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        lines.extend(
            f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None
        )
    return "\n".join(lines) + "\n"


def _with_env(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in raw.items() if isinstance(v, dict)}
    for name, value in os.environ.items():
        if not name.startswith("IDMINT_") or name in (DATA_DIR_ENV, "IDMINT_HSM_PIN"):
            continue
        parts = name[len("IDMINT_") :].lower().split("_", 1)
        if len(parts) == 2 and parts[0] in ("ca", "hsm", "database", "server", "log", "limits"):
            merged.setdefault(parts[0], {})[parts[1]] = value
    return merged


def _int(section: dict[str, Any], key: str, default: int, where: str) -> int:
    value = section.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}") from None


def _seconds(section: dict[str, Any], key: str, default: float, where: str) -> float:
    value = section.get(key, default)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= 600:
        raise ConfigError(f"{where}: {key} {seconds:g} is outside 0-600 seconds")
    return seconds


def load(data_dir: str | Path) -> CAConfig:
    """Read ``DIR/idmint.toml`` with environment overrides applied."""
    directory = Path(data_dir)
    path = directory / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{directory} is not an idmint data directory (no {CONFIG_NAME}); "
            "create one with `idmint init --data-dir DIR --trust-domain TD`"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    sections = _with_env(raw)
    ca = sections.get("ca", {})
    hsm = sections.get("hsm", {})
    database = sections.get("database", {})
    if "trust_domain" not in ca:
        raise ConfigError(f"{path}: [ca] trust_domain is missing")

    def local(value: str | None) -> str | None:
        # Relative paths in the file are relative to the data directory.
        if value is None:
            return None
        candidate = Path(value)
        return str(candidate if candidate.is_absolute() else directory / candidate)

    env: dict[str, str] = {}
    if hsm.get("softhsm_conf"):
        env["SOFTHSM2_CONF"] = str(local(hsm["softhsm_conf"]))
    try:
        hsm_config = HSMConfig(
            module=hsm.get("module"),
            token_label=hsm.get("token_label"),
            token_uri=hsm.get("token_uri"),
            pin_file=local(hsm.get("pin_file")),
            max_sessions=_int(hsm, "max_sessions", 8, str(path)),
            env=env,
        )
    except ValueError as exc:
        raise ConfigError(f"{path}: [hsm] {exc}") from None
    return CAConfig(
        data_dir=directory,
        trust_domain=str(ca["trust_domain"]),
        database_url=str(database.get("url") or default_database_url(directory)),
        hsm=hsm_config,
        root_key_type=str(ca.get("root_key_type", "ec-p256")),
        root_lifetime_days=_int(ca, "root_lifetime_days", 365, str(path)),
        intermediate_key_type=str(ca.get("intermediate_key_type", "ec-p256")),
        intermediate_lifetime_hours=_int(ca, "intermediate_lifetime_hours", 24, str(path)),
        jwt_algorithm=str(ca.get("jwt_algorithm", "ES256")),
        jwt_lifetime_hours=_int(ca, "jwt_lifetime_hours", 24, str(path)),
        issuer_url=str(ca.get("issuer_url", "https://127.0.0.1:8443")),
        cache_seconds=float(ca.get("cache_seconds", 1.0)),
        crl_url=ca.get("crl_url"),
        ocsp_url=ca.get("ocsp_url"),
        limits=_limits(sections.get("limits", {}), str(path)),
        database_timeout=_seconds(database, "timeout", 2.0, str(path)),
        extra={k: v for k, v in sections.items() if k not in ("ca", "hsm", "database", "limits")},
    )


def resolve_data_dir(option: str | None) -> Path:
    """``--data-dir`` if given, else ``IDMINT_DATA_DIR``; raise if neither."""
    value = option or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise ConfigError(f"no data directory: pass --data-dir or set {DATA_DIR_ENV}")
    return Path(value)
