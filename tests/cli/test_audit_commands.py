"""``idmint audit verify|checkpoint|list|export``, run as a user would, on a real data directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, create_engine

from tests.audit_tamper import rewrite_from, truncate_to
from tests.cli.conftest import Runner, _command


@pytest.fixture
def data_dir(idmint: Runner, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    done = idmint("init", "--data-dir", str(data), "--trust-domain", "example.org")
    assert done.returncode == 0, done.stderr
    return data


def _entry(idmint: Runner, data: Path, name: str) -> None:
    done = idmint(
        "entry",
        "create",
        "--data-dir",
        str(data),
        "--spiffe-id",
        f"spiffe://example.org/{name}",
        "--selector",
        f"unix:uid:{1000 + len(name)}",
        "--owner",
        "team",
        "--expires-at",
        "90d",
    )
    assert done.returncode == 0, done.stderr


def _engine(data: Path) -> Engine:
    return create_engine(f"sqlite:///{data / 'idmint.db'}")


def _head(idmint: Runner, data: Path) -> dict[str, object]:
    done = idmint("audit", "verify", "--data-dir", str(data), "--output", "json")
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_verify_shows_head_time_span_and_checkpoints(idmint: Runner, data_dir: Path) -> None:
    # init signed the first checkpoint: the root and audit key creation.
    done = idmint("audit", "verify", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert "Audit log intact: 2 events" in done.stdout
    assert "head         event 2, hash " in done.stdout
    assert "time span" in done.stdout and " -> " in done.stdout
    assert "1 signed, all verify; latest #1 covers event 2 (0 event(s) since)" in done.stdout
    _entry(idmint, data_dir, "web")
    report = _head(idmint, data_dir)
    assert report["head_seq"] == 3 and report["checkpoints"] == 1
    latest = report["latest_checkpoint"]
    assert isinstance(latest, dict) and latest["seq"] == 2


def test_an_authority_change_in_the_cli_is_checkpointed(idmint: Runner, data_dir: Path) -> None:
    _entry(idmint, data_dir, "web")
    done = idmint("authority", "prepare", "root", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    report = _head(idmint, data_dir)
    latest = report["latest_checkpoint"]
    assert isinstance(latest, dict) and latest["seq"] == report["head_seq"] == 4


@pytest.mark.slow
def test_checkpoint_out_then_consistent_rewrite_is_caught(
    idmint: Runner, data_dir: Path, tmp_path: Path
) -> None:
    for name in ("a", "bb", "ccc"):
        _entry(idmint, data_dir, name)
    saved = tmp_path / "checkpoint.jws"
    done = idmint("audit", "checkpoint", "--data-dir", str(data_dir), "--out", str(saved))
    assert done.returncode == 0, done.stderr
    assert "Saved checkpoint #2 (event 5," in done.stdout
    token = saved.read_text().strip()
    assert jwt.get_unverified_header(token)["typ"] == "idmint-audit-checkpoint+jwt"
    ok = idmint("audit", "verify", "--data-dir", str(data_dir), "--checkpoint", str(saved))
    assert ok.returncode == 0, ok.stderr
    assert "extends      your checkpoint of event 5" in ok.stdout

    rewrite_from(_engine(data_dir), 4, "spiffe://example.org/evil")
    # The stored checkpoints alone catch it (#1 covers event 2, #2 event 5)...
    plain = idmint("audit", "verify", "--data-dir", str(data_dir))
    assert plain.returncode == 1
    assert "first event that differs is one of events 3-5" in plain.stderr
    # ... and the operator's copy does too once they are deleted.
    with _engine(data_dir).begin() as connection:
        connection.exec_driver_sql("DELETE FROM audit_checkpoints")
    assert idmint("audit", "verify", "--data-dir", str(data_dir)).returncode == 0  # fooled
    bad = idmint("audit", "verify", "--data-dir", str(data_dir), "--checkpoint", str(saved))
    assert bad.returncode == 1
    assert "audit event 5 no longer has the hash the checkpoint" in bad.stderr
    assert "the chain was rewritten" in bad.stderr


@pytest.mark.slow
def test_a_rewrite_is_pinned_to_the_row_with_frequent_checkpoints(
    idmint: Runner, data_dir: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "checkpoint.jws"
    for name in ("a", "bb", "ccc"):
        _entry(idmint, data_dir, name)
        done = idmint("audit", "checkpoint", "--data-dir", str(data_dir), "--out", str(saved))
        assert done.returncode == 0, done.stderr
    rewrite_from(_engine(data_dir), 4, "spiffe://example.org/evil")
    bad = idmint("audit", "verify", "--data-dir", str(data_dir), "--checkpoint", str(saved))
    assert bad.returncode == 1
    assert "the first event that differs is event 4" in bad.stderr


def test_a_truncated_tail_with_a_fixed_head_is_caught(
    idmint: Runner, data_dir: Path, tmp_path: Path
) -> None:
    for name in ("a", "bb"):
        _entry(idmint, data_dir, name)
    saved = tmp_path / "checkpoint.json"
    done = idmint(
        "audit", "checkpoint", "--data-dir", str(data_dir), "--output", "json"
    )  # the API's JSON form is accepted too
    saved.write_text(done.stdout)
    truncate_to(_engine(data_dir), 3)
    with _engine(data_dir).begin() as connection:
        connection.exec_driver_sql("DELETE FROM audit_checkpoints WHERE seq > 3")
    assert idmint("audit", "verify", "--data-dir", str(data_dir)).returncode == 0  # fooled
    bad = idmint("audit", "verify", "--data-dir", str(data_dir), "--checkpoint", str(saved))
    assert bad.returncode == 1
    assert "covers events up to 4, but the log ends at event 3" in bad.stderr


def test_a_forged_checkpoint_is_refused(idmint: Runner, data_dir: Path, tmp_path: Path) -> None:
    _entry(idmint, data_dir, "web")
    real = idmint("audit", "checkpoint", "--data-dir", str(data_dir)).stdout.strip()
    claims = jwt.decode(real, options={"verify_signature": False})
    header = jwt.get_unverified_header(real)
    forged = jwt.encode(
        {**claims, "seq": 1},
        ec.generate_private_key(ec.SECP256R1()),
        "ES256",
        headers={"kid": header["kid"], "typ": header["typ"]},
    )
    path = tmp_path / "forged.jws"
    path.write_text(forged)
    bad = idmint("audit", "verify", "--data-dir", str(data_dir), "--checkpoint", str(path))
    assert bad.returncode == 1
    assert "does not verify with audit key" in bad.stderr
    path.write_text("garbage")
    bad = idmint("audit", "verify", "--data-dir", str(data_dir), "--checkpoint", str(path))
    assert bad.returncode == 1 and "not a compact JWS" in bad.stderr


@pytest.mark.slow
def test_list_filters_and_json(idmint: Runner, data_dir: Path) -> None:
    for name in ("a", "bb"):
        _entry(idmint, data_dir, name)
    prepared = idmint("authority", "prepare", "jwt", "--data-dir", str(data_dir))
    assert prepared.returncode == 0, prepared.stderr

    def listed(*args: str) -> list[dict[str, object]]:
        done = idmint("audit", "list", "--data-dir", str(data_dir), "--output", "json", *args)
        assert done.returncode == 0, done.stderr
        result: list[dict[str, object]] = json.loads(done.stdout)
        return result

    everything = listed()
    assert [e["seq"] for e in everything] == [1, 2, 3, 4, 5]
    assert [e["action"] for e in listed("--action", "authority")] == [
        "authority.create.root",
        "authority.create.audit",
        "authority.create.jwt",
    ]
    assert [e["seq"] for e in listed("--action", "entry.create")] == [3, 4]
    subject = listed("--subject", "spiffe://example.org/bb")
    assert [e["seq"] for e in subject] == [4] and subject[0]["outcome"] == "success"
    assert listed("--since", "1h") == everything
    assert listed("--since", "2999-01-01T00:00:00Z") == []
    text = idmint("audit", "list", "--data-dir", str(data_dir), "--action", "entry")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "ACTION"]
    assert len(lines) == 3 and "spiffe://example.org/a" in lines[1]
    refused = idmint("audit", "list", "--data-dir", str(data_dir), "--since", "yesterday")
    assert refused.returncode == 2 and "neither an ISO 8601 time nor a duration" in refused.stderr


def test_export_prints_json_lines(idmint: Runner, data_dir: Path) -> None:
    _entry(idmint, data_dir, "web")
    done = idmint("audit", "export", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["seq"] for e in events] == [1, 2, 3]
    assert events[2]["action"] == "entry.create" and len(events[2]["hash"]) == 64


def _env() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IDMINT_")}
    environment.pop("SOFTHSM2_CONF", None)
    return environment


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_export_follow_prints_new_events_and_stops_cleanly(
    idmint: Runner, data_dir: Path, stop: signal.Signals
) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(10)
    address = f"udp://127.0.0.1:{udp.getsockname()[1]}"
    with subprocess.Popen(
        [
            *_command(),
            "audit",
            "export",
            "--follow",
            "--interval",
            "1s",
            "--data-dir",
            str(data_dir),
            "--syslog-address",
            address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    ) as follower:
        _follow_and_stop(idmint, data_dir, follower, udp, stop)
    udp.close()


def _follow_and_stop(
    idmint: Runner,
    data_dir: Path,
    follower: subprocess.Popen[str],
    udp: socket.socket,
    stop: signal.Signals,
) -> None:
    try:
        assert follower.stdout is not None
        first = [json.loads(follower.stdout.readline()) for _ in range(2)]
        assert [e["seq"] for e in first] == [1, 2]
        _entry(idmint, data_dir, "web")
        later = json.loads(follower.stdout.readline())
        assert (later["seq"], later["action"]) == (3, "entry.create")
        # The same three events reached syslog, one datagram each.
        messages = [udp.recv(65536).decode() for _ in range(3)]
        assert all(m.startswith("<") and "idmint-audit: {" in m for m in messages)
        assert json.loads(messages[2].split("idmint-audit: ", 1)[1].rstrip("\x00"))["seq"] == 3
        time.sleep(0.2)
        follower.send_signal(stop)
        assert follower.wait(timeout=20) == 0
        assert follower.stderr is not None
        assert "Traceback" not in follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_export_to_an_unreachable_syslog_says_so(idmint: Runner, data_dir: Path) -> None:
    done = idmint(
        "audit", "export", "--data-dir", str(data_dir), "--syslog-address", "/nonexistent/log"
    )
    assert done.returncode == 1 and "cannot reach syslog at /nonexistent/log" in done.stderr
    bad = idmint("audit", "export", "--data-dir", str(data_dir), "--syslog-address", "udp://x")
    assert bad.returncode == 1 and "is not udp://HOST:PORT" in bad.stderr
