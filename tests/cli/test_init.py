"""``idmint init`` and ``idmint hsm keys`` through the real command."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import click
import pytest
from cryptography import x509

from idmint.cli.main import cli
from idmint.hsm.softhsm import SoftHSMToken
from tests.cli.conftest import Runner


def _snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with its content hash and mode."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        + oct(path.stat().st_mode)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def test_init_creates_a_root_that_openssl_accepts(
    idmint: Runner, tmp_path: Path, softhsm_dir: Path
) -> None:
    data = tmp_path / "data"
    done = idmint(
        "init", "--data-dir", str(data), "--trust-domain", "example.org", "--output", "json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    root_pem = tmp_path / "root.pem"
    root_pem.write_text(report["root"]["certificate_pem"])

    verify = _openssl("verify", "-CAfile", str(root_pem), str(root_pem))
    assert verify.returncode == 0 and "OK" in verify.stdout, verify.stderr
    assert _openssl("x509", "-in", str(root_pem), "-noout", "-checkend", "86400").returncode == 0
    # Valid one year by default: it will have expired in 400 days.
    assert (
        _openssl("x509", "-in", str(root_pem), "-noout", "-checkend", str(400 * 86400)).returncode
        == 1
    )

    certificate = x509.load_pem_x509_certificate(root_pem.read_bytes())
    extensions = certificate.extensions
    basic = extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    ski = extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())

    # The data directory holds the token, PIN files of mode 0600, database, config.
    for name in ("idmint.toml", "idmint.db", "hsm/softhsm2.conf", "hsm/user.pin", "hsm/so.pin"):
        assert (data / name).is_file(), name
    assert (data / "hsm/user.pin").stat().st_mode & 0o777 == 0o600
    assert (data / "hsm/so.pin").stat().st_mode & 0o777 == 0o600
    pin = (data / "hsm/user.pin").read_text().strip()
    assert pin not in done.stdout and pin not in done.stderr

    keys = idmint("hsm", "keys", "--data-dir", str(data), "--output", "json")
    assert keys.returncode == 0, keys.stderr
    # The root's key and the audit checkpoint key, both unextractable.
    listed = {k["uri"]: k for k in json.loads(keys.stdout)}
    assert len(listed) == 2 and report["root"]["key_uri"] in listed
    for key in listed.values():
        assert (key["sensitive"], key["extractable"], key["never_extractable"]) == (
            True,
            False,
            True,
        )
        assert key["private"] and key["token"]


def test_init_twice_refuses_and_changes_nothing(idmint: Runner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert idmint("init", "--data-dir", str(data), "--trust-domain", "example.org").returncode == 0
    before = _snapshot(data)
    again = idmint("init", "--data-dir", str(data), "--trust-domain", "other.org")
    assert again.returncode == 1
    assert "already holds a trust domain" in again.stderr
    assert _snapshot(data) == before


def test_init_refuses_a_non_empty_directory(idmint: Runner, tmp_path: Path) -> None:
    data = tmp_path / "busy"
    data.mkdir()
    (data / "notes.txt").write_text("mine")
    done = idmint("init", "--data-dir", str(data), "--trust-domain", "example.org")
    assert done.returncode == 1 and "is not an empty directory" in done.stderr
    assert [p.name for p in data.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("trust_domain", "reason"),
    [("Example.org", "uppercase"), ("example.org:443", "port"), ("", "missing")],
)
def test_init_bad_trust_domain_creates_nothing(
    idmint: Runner, tmp_path: Path, trust_domain: str, reason: str
) -> None:
    data = tmp_path / "data"
    done = idmint("init", "--data-dir", str(data), "--trust-domain", trust_domain)
    assert done.returncode == 1
    assert reason in done.stderr
    assert not data.exists()


def test_init_with_an_existing_token(
    idmint: Runner, tmp_path: Path, token: SoftHSMToken, softhsm_dir: Path
) -> None:
    data = tmp_path / "data"
    env = {"SOFTHSM2_CONF": str(softhsm_dir / "softhsm2.conf")}
    done = idmint(
        "init",
        "--data-dir",
        str(data),
        "--trust-domain",
        "prod.example.com",
        "--key-type",
        "ec-p384",
        "--pkcs11-module",
        token.module,
        "--token-label",
        token.label,
        "--pin-file",
        str(token.user_pin_file),
        "--output",
        "json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["root"]["key_uri"].startswith(f"pkcs11:token={token.label};")
    assert report["root"]["key_type"] == "ec-p384"
    assert not (data / "hsm").exists()  # no SoftHSM token of its own
    keys = idmint("hsm", "keys", "--output", "json", env={**env, "IDMINT_DATA_DIR": str(data)})
    assert keys.returncode == 0, keys.stderr
    # The root (P-384 as asked) and the audit checkpoint key (always P-256).
    assert sorted(k["type"] for k in json.loads(keys.stdout)) == ["ec-p256", "ec-p384"]


def test_init_with_a_missing_module_creates_nothing(idmint: Runner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    pin = tmp_path / "pin"
    pin.write_text("1234")
    pin.chmod(0o600)
    done = idmint(
        "init",
        "--data-dir",
        str(data),
        "--trust-domain",
        "example.org",
        "--pkcs11-module",
        "/nonexistent/lib.so",
        "--token-label",
        "x",
        "--pin-file",
        str(pin),
    )
    assert done.returncode == 1 and "/nonexistent/lib.so" in done.stderr
    assert not data.exists()


@pytest.mark.slow  # a token and root key per type (the default EC P-256 is everywhere else)
@pytest.mark.parametrize("key_type", ["ec-p384", "rsa-2048", "ed25519"])
def test_init_key_types(idmint: Runner, tmp_path: Path, key_type: str) -> None:
    data = tmp_path / key_type
    done = idmint(
        "init",
        "--data-dir",
        str(data),
        "--trust-domain",
        "example.org",
        "--key-type",
        key_type,
        "--output",
        "json",
    )
    assert done.returncode == 0, done.stderr
    root_pem = tmp_path / f"{key_type}.pem"
    root_pem.write_text(json.loads(done.stdout)["root"]["certificate_pem"])
    verify = _openssl("verify", "-CAfile", str(root_pem), str(root_pem))
    assert verify.returncode == 0, verify.stderr


def test_no_command_takes_a_pin_on_argv() -> None:
    """The PIN comes from a file or IDMINT_HSM_PIN; no option may carry it."""

    def walk(command: click.Command) -> list[str]:
        names = [p.name or "" for p in command.params]
        if isinstance(command, click.Group):
            # Through get_command: the top-level group imports its commands lazily.
            context = click.Context(command)
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None, name
                names.extend(walk(sub))
        return names

    names = walk(cli)
    assert "pin_file" in names
    assert [n for n in names if "pin" in n and n != "pin_file"] == []


def test_bundle_show_prints_the_root(idmint: Runner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    init = idmint(
        "init", "--data-dir", str(data), "--trust-domain", "example.org", "--output", "json"
    )
    assert init.returncode == 0, init.stderr
    shown = idmint("bundle", "show", env={"IDMINT_DATA_DIR": str(data)})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == json.loads(init.stdout)["root"]["certificate_pem"]


def test_commands_on_a_missing_data_dir_say_how_to_create_one(
    idmint: Runner, tmp_path: Path
) -> None:
    done = idmint("bundle", "show", "--data-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert "is not an idmint data directory" in done.stderr and "idmint init" in done.stderr
    none = idmint("hsm", "keys")
    assert none.returncode == 1 and "IDMINT_DATA_DIR" in none.stderr
