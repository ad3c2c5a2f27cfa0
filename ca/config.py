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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idmint.errors import ConfigError
from idmint.hsm.config import HSMConfig

CONFIG_NAME = "idmint.toml"
DATABASE_NAME = "idmint.db"
HSM_DIR = "hsm"
DATA_DIR_ENV = "IDMINT_DATA_DIR"


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME


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
        if len(parts) == 2 and parts[0] in ("ca", "hsm", "database", "server", "log"):
            merged.setdefault(parts[0], {})[parts[1]] = value
    return merged


def _int(section: dict[str, Any], key: str, default: int, where: str) -> int:
    value = section.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}") from None


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
        extra={k: v for k, v in sections.items() if k not in ("ca", "hsm", "database")},
    )


def resolve_data_dir(option: str | None) -> Path:
    """``--data-dir`` if given, else ``IDMINT_DATA_DIR``; raise if neither."""
    value = option or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise ConfigError(f"no data directory: pass --data-dir or set {DATA_DIR_ENV}")
    return Path(value)
