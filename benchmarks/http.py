"""X509-SVID and JWT-SVID requests per second through gunicorn on loopback.

Starts ``idmint server`` on a fresh embedded-default data directory (SoftHSM +
SQLite), then 16 client threads with keep-alive HTTPS connections send
``POST /v1/svid/x509`` (join-token attestation + a P-256 CSR) and
``POST /v1/svid/jwt`` (join-token attestation) for a fixed time each.
Join tokens are single use, so they are minted beforehand straight into the
database. Prints JSON: requests/s, p50/p99 latency, errors.

The load comes from ``wrk`` (Debian package ``wrk``; C, event-driven) when
it is installed, so the 16 clients take as little as possible of the 2
cores they share with the server; its Lua script hands each connection its
own pre-made bodies, since every join token works once. ``--client python``
uses 16 Python threads with http.client instead (the figure then includes
their CPU). Either way the clients run on this machine and the figures are a
floor for a separate load generator.

Stacks (``--stacks``): the same server with its per-request log line on (the
default) and off (``[log] level = "warning"``), each its own data directory,
measured in the same interleaved rounds. ``--build NAME=PATH`` adds a stack
run by another build's ``idmint`` (e.g. ``.venv/bin/idmint`` of a worktree at
an older commit), for before/after figures from the same rounds; its
database must take the join tokens this build mints (same join_tokens table).
``anomaly_off`` is ``access_log_on`` with the issuance anomaly checks off
(``[anomaly] enabled = false``): ``--stacks access_log_on,anomaly_off`` gives
``anomaly_on_vs_off``, the ratio of requests/s (goal >= 0.95, issue 15) and of
CPU per request with the checks on to off. The benchmark's entries are new,
so their baselines are still learning (at thousands a second a learned one
would throttle them): the figure is the cost of counting and learning on
every request, without the comparison with a learned baseline (a few float
operations and set lookups). ``paired_x509``/``paired_jwt`` give the ratio
in each round (the two stacks run back to back in it) and their median, the
steadier figure on a shared machine. ``anomaly_memory`` (checks on, counts
never written back: ``sync_seconds = 1e9``) separates the cost of the checks
from that of writing their counts back.

Peer: cfssl (``apt-get install -y golang-cfssl wrk``; Debian's cfssl 1.2.0),
``cfssl serve`` on loopback with a software P-256 CA and TLS, under the same
wrk load in the same rounds: ``POST /api/v1/cfssl/sign`` (a P-256 CSR) and
``GET /api/v1/cfssl/scaninfo``. Ratios: X509-SVID and JWT-SVID vs cfssl sign,
``/healthz`` vs cfssl's GET. ``--no-cfssl`` skips it. ``--py-spy SECONDS``
records a profile of one server worker under X509 load (needs py-spy);
``--py-spy-gil`` keeps only the samples of the thread holding the GIL (where
the worker's CPU goes, rather than where its threads wait); ``--py-spy-native``
adds native frames (OpenSSL, SQLite, SoftHSM, cryptography's Rust).

``--limits redis`` adds a stack (``limits_redis``) with its rate limits in a
redis-server started for the run: the default levels (per address and per
identity), or with ``redis-all`` every level (also per trust domain and
attestation attempts); rules too high to trip, so each request pays for
every count. Its rounds run interleaved with the others; the JSON gives the
ratio of its requests/s to the first stack's (goal >= 0.9) and of the CPU
time the server processes (and redis-server) spent per request, which the
noise of a shared machine disturbs less.

Every round records ``cpu_ms_per_request``: CPU time of the server's process
tree (and redis-server's) over the round, per successful request, and
``cpu_ms_by_process`` the same split by role (master, worker, writer, front).

``granian`` (``pip install granian``): granian, a Rust HTTP/TLS server,
runs idmint's WSGI app (benchmarks/granian_app.py) with the same workers and
threads, TLS certificate and writer process (of an idle ``idmint server``
beside it): a measurement of another front, not a supported way to serve.

``--idle-probe SECONDS``: after the rounds, when each stack closes a
connection that never sends its TLS ClientHello and one that completes the
handshake and never sends a request (None: still open after SECONDS).

Memory: ``server_pss_mib`` gives each stack's PSS (process tree: master,
workers, writer) idle, after the load, after each round, and its growth from
the first round to the last. A 10-minute run: ``--stacks access_log_on
--no-cfssl --seconds 20 --rounds 10 --token-rate 1500``.

Usage: python benchmarks/http.py [--seconds 5] [--rounds 3] [--clients 16] [--workers 2]
                                 [--client wrk|python] [--no-cfssl] [--py-spy 10]
                                 [--py-spy-gil] [--py-spy-native] [--idle-probe 75]
                                 [--stacks access_log_on,access_log_off,anomaly_off,
                                           anomaly_memory,granian] [--token-rate 4000]
                                 [--limits off|redis|redis-all] [--build NAME=PATH ...]
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder leads sys.path and this file would
# shadow the standard library's ``http`` package.
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serving import IDMINT as IDMINT_PATH
from benchmarks.serving import clean_env, free_port, start_server, wait_ready
from idmint.attestation.join_token import new_token, token_hash
from idmint.ca.storage.db import Database
from idmint.client import new_key_and_csr, x509_request


def mint_tokens(database: Database, spiffe_id: str, count: int) -> list[str]:
    """Join tokens inserted in bulk (setup only; the API path is tested elsewhere)."""
    if count <= 0:
        return []  # an INSERT of no rows is an error, not a no-op
    tokens = [new_token() for _ in range(count)]
    now = datetime.now(UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "token_hash": token_hash(t),
            "spiffe_id": spiffe_id,
            "created_by": "bench",
            "created_at": now,
            "expires_at": now + timedelta(hours=1),
            "used_at": None,
            "revoked": False,
        }
        for t in tokens
    ]
    from sqlalchemy import insert

    from idmint.ca.storage.models import JoinToken

    with database.session() as session:
        session.execute(insert(JoinToken), rows)
    return tokens


def run_load(
    port: int, bundle: str, bodies: list[bytes], path: str, clients: int, seconds: float
) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=bundle)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    statuses: dict[int, int] = {}
    next_body = iter(range(len(bodies)))
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        start.wait()
        while time.monotonic() < stop:
            with lock:
                n = next(next_body, None)
            if n is None:
                break
            began = time.perf_counter()
            try:
                connection.request(
                    "POST", path, body=bodies[n], headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", port, context=context, timeout=30
                )
                status = 0
            latencies[index].append(time.perf_counter() - began)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
            if status != 201:
                errors[index] += 1
        connection.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = sorted(x for per in latencies for x in per)
    ok = len(flat) - sum(errors)
    return {
        "requests": len(flat),
        "ok": ok,
        "errors": sum(errors),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "requests_per_second": round(ok / elapsed),
        "p50_ms": round(statistics.median(flat) * 1000, 2) if flat else None,
        "p99_ms": round(flat[int(len(flat) * 0.99) - 1] * 1000, 2) if flat else None,
    }


# Each wrk thread takes every n-th body (n = threads) in order; done() prints
# one JSON line with what the benchmark reports.
WRK_SCRIPT = """
local thread_count = 0
function setup(thread)
  thread:set("id", thread_count)
  thread_count = thread_count + 1
end
function init(args)
  bodies, next_body = {}, 0
  repeat_bodies = args[3] == "repeat"
  if args[1] == "-" then return end
  local n, threads = 0, tonumber(args[2])
  for line in io.lines(args[1]) do
    -- Bodies used once are shared out; repeated ones go to every thread.
    if repeat_bodies or n % threads == id then bodies[#bodies + 1] = line end
    n = n + 1
  end
end
function request()
  if #bodies == 0 then return wrk.format("GET") end
  next_body = next_body + 1
  local body = bodies[next_body] or "{}"
  if repeat_bodies then body = bodies[(next_body - 1) % #bodies + 1] end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "non_2xx": %d, "socket_errors": %d, "seconds": %f, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, errors.status, errors.connect + errors.read + errors.write
    + errors.timeout, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(99)))
end
"""


def run_wrk(
    port: int,
    bodies: list[bytes],
    path: str,
    clients: int,
    seconds: float,
    scratch: Path,
    repeat: bool = False,
) -> dict[str, Any]:
    """``bodies`` POSTed once each (``repeat``: round and round); none: GET ``path``."""
    threads = 2
    body_file, script = scratch / "bodies.jsonl", scratch / "load.lua"
    body_file.write_bytes(b"\n".join(bodies) + b"\n")
    script.write_text(WRK_SCRIPT)
    completed = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s",
            "-s", str(script), f"https://127.0.0.1:{port}{path}", "--",
            str(body_file) if bodies else "-", str(threads), "repeat" if repeat else "once",
        ],
        capture_output=True, text=True,
    )  # fmt: skip
    if completed.returncode != 0:
        raise SystemExit(f"wrk failed: {completed.stderr or completed.stdout}")
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    ok = figures["requests"] - figures["non_2xx"] - figures["socket_errors"]
    return {
        "requests": figures["requests"],
        "ok": ok,
        "errors": figures["non_2xx"] + figures["socket_errors"],
        "requests_per_second": round(ok / figures["seconds"]),
        "p50_ms": round(figures["p50_us"] / 1000, 2),
        "p99_ms": round(figures["p99_us"] / 1000, 2),
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round with the median rate, and every round's rate and p99.

    This VM's speed drifts by tens of percent from minute to minute; the
    median of rounds and the baseline measured beside them (GET /healthz
    through the same server and TLS) keep the figures comparable.
    """
    if not results:
        return None
    ordered = sorted(results, key=lambda r: r["requests_per_second"])
    median = dict(ordered[len(ordered) // 2])
    median["rounds_rps"] = [r["requests_per_second"] for r in results]
    median["rounds_p99_ms"] = [r["p99_ms"] for r in results]
    return median


def _ratio(
    limited: list[dict[str, Any]], off: list[dict[str, Any]], what: str = "rps"
) -> float | None:
    """Median over median; for ``cpu``, the throughput the CPU cost alone allows (off / on)."""
    if not limited or not off:
        return None
    if what == "cpu":
        on = statistics.median(r["cpu_ms_per_request"] for r in limited)
        return round(statistics.median(r["cpu_ms_per_request"] for r in off) / on, 3)
    on = statistics.median(r["requests_per_second"] for r in limited)
    return round(on / statistics.median(r["requests_per_second"] for r in off), 3)


def _tree(roots: list[int]) -> tuple[set[int], dict[int, int]]:
    """``roots`` and all their descendants, and every process's CPU ticks, from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    wanted, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        frontier.extend(pid for pid in children if pid not in wanted)
        wanted.update(children)
    return wanted, ticks


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system) of ``roots`` and all their descendants."""
    return sum(tree_cpu_by_pid(roots).values())


def tree_cpu_by_pid(roots: list[int]) -> dict[int, float]:
    """CPU time (user + system) of each of ``roots`` and their descendants."""
    wanted, ticks = _tree(roots)
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: ticks.get(pid, 0) / tick for pid in wanted}


def cpu_by_role(
    before: dict[int, float], after: dict[int, float], roles: dict[int, str], ok: int
) -> dict[str, float]:
    """Milliseconds of CPU per successful request, by process role (master, workers, writer...)."""
    spent: dict[str, float] = {}
    for pid, seconds in after.items():
        role = roles.get(pid, "other")
        spent[role] = spent.get(role, 0.0) + seconds - before.get(pid, 0.0)
    return {role: round(s * 1000 / max(1, ok), 3) for role, s in sorted(spent.items())}


def _pss_kib(pid: int) -> dict[str, int]:
    """A process's PSS lines from smaps_rollup (``Pss``, ``Pss_Anon``, ...) in KiB; {} if gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                name, _, rest = line.partition(":")
                if name.startswith("Pss"):
                    found[name] = int(rest.split()[0])
    except OSError:
        pass
    return found


def pss_by_role(roles: dict[int, str]) -> dict[str, dict[str, float]]:
    """PSS in MiB by process role, split into anonymous, file-backed and shared memory.

    Where growth lives: heaps (anon), SQLite's mapped -shm index (shmem), code.
    """
    split: dict[str, dict[str, float]] = {}
    for pid, role in roles.items():
        mine = split.setdefault(role, {})
        for name, kib in _pss_kib(pid).items():
            if name in ("Pss_Anon", "Pss_File", "Pss_Shmem"):
                kind = name.removeprefix("Pss_").lower()
                mine[kind] = mine.get(kind, 0.0) + kib / 1024
    return {
        r: {k: round(v, 1) for k, v in sorted(kinds.items())} for r, kinds in sorted(split.items())
    }


def tree_pss_mib(roots: list[int]) -> float:
    """Proportional set size of ``roots`` and their descendants (shared pages split)."""
    return round(sum(_pss_kib(pid).get("Pss", 0) for pid in _tree(roots)[0]) / 1024, 1)


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def start_cfssl(scratch: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """``cfssl serve`` with a software P-256 CA and a TLS certificate from it, on loopback."""
    import ipaddress

    from cryptography.x509.oid import NameOID

    folder = scratch / "cfssl"
    folder.mkdir()
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cfssl bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "ca-key.pem").write_bytes(_pem(ca_key))
    (folder / "tls.pem").write_bytes(tls.public_bytes(serialization.Encoding.PEM))
    (folder / "tls-key.pem").write_bytes(_pem(tls_key))
    port = free_port()
    server = subprocess.Popen(
        ["cfssl", "serve", "-address", "127.0.0.1", "-port", str(port),
         "-ca", str(folder / "ca.pem"), "-ca-key", str(folder / "ca-key.pem"),
         "-tls-cert", str(folder / "tls.pem"), "-tls-key", str(folder / "tls-key.pem"),
         "-loglevel", "5"],
        stdout=subprocess.DEVNULL, stderr=(folder / "cfssl.log").open("wb"),
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    deadline = time.monotonic() + 30
    while True:
        try:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
            connection.request("GET", "/api/v1/cfssl/scaninfo")
            if connection.getresponse().status == 200:
                return server, port, str(folder / "ca.pem")
        except (OSError, ssl.SSLError):
            pass  # not listening yet
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit("cfssl serve did not start: " + (folder / "cfssl.log").read_text())
        time.sleep(0.2)


def cfssl_sign_body() -> bytes:
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.test")]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    return json.dumps({"certificate_request": csr}).encode()


def worker_pids(server: subprocess.Popen[bytes]) -> list[int]:
    """gunicorn's worker processes under ``idmint server`` (children of its master)."""
    found = subprocess.run(
        ["ps", "-o", "pid=,ppid=,args=", "-ax"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # The master is the server process itself; workers are its children but
    # the writer (python -m idmint.ca.storage.writer).
    return [
        int(line.split()[0])
        for line in found
        if line.strip() and int(line.split()[1]) == server.pid and "storage.writer" not in line
    ]


def _body(token: str, csr: str | None) -> bytes:
    attestation = {"type": "join_token", "token": token}
    if csr is None:
        return json.dumps({"attestation": attestation, "audience": "bench"}).encode()
    return json.dumps(x509_request(attestation, csr)).encode()


#: What ``--stacks`` may name: the access log on or off, or the anomaly checks off.
STACKS = ("access_log_on", "access_log_off", "anomaly_off", "anomaly_memory", "granian")


@dataclass
class Stack:
    """One idmint server under test: its data directory, pre-made bodies and process."""

    name: str
    data: Path
    x509_bodies: list[bytes]
    jwt_bodies: list[bytes]
    spy_bodies: list[bytes]
    server: subprocess.Popen[bytes] | None = None
    port: int = 0
    #: [limits] settings appended to idmint.toml (None: ``--rate-limit none``).
    limits: str | None = None
    #: Processes besides the server whose CPU counts for this stack (redis-server).
    helpers: tuple[int, ...] = ()
    #: The idmint executable that runs this stack (another build for --build).
    idmint: str = IDMINT_PATH
    #: granian serving the app in front instead of gunicorn (the gunicorn
    #: server still runs, idle, for its writer process).
    front: subprocess.Popen[bytes] | None = None

    @classmethod
    def prepare(
        cls,
        root: Path,
        name: str,
        args: argparse.Namespace,
        access_log: bool,
        limits: str | None = None,
        idmint: str = IDMINT_PATH,
        anomaly: bool = True,
    ) -> Stack:
        environment = clean_env()
        data = root / name
        subprocess.run(
            [idmint, "init", "--data-dir", str(data), "--trust-domain", "bench.test"],
            check=True, capture_output=True, env=environment,
        )  # fmt: skip
        if not access_log:  # the app's request log lines are written at level info
            with (data / "idmint.toml").open("a") as config:
                config.write('\n[log]\nlevel = "warning"\n')
        if limits is not None:
            with (data / "idmint.toml").open("a") as config:
                config.write(limits)
        if not anomaly:
            with (data / "idmint.toml").open("a") as config:
                config.write("\n[anomaly]\nenabled = false\n")
        if name == "anomaly_memory":  # checks on, counts never written back (a diagnosis)
            with (data / "idmint.toml").open("a") as config:
                config.write("\n[anomaly]\nsync_seconds = 1e9\n")
        for kind in ("x509", "jwt"):
            subprocess.run(
                [idmint, "entry", "create", "--data-dir", str(data),
                 "--spiffe-id", f"spiffe://bench.test/{kind}", "--selector", "join_token:any:true",
                 "--owner", "bench", "--expires-at", "1d", "--audience", "bench"],
                check=True, capture_output=True, env=environment,
            )  # fmt: skip
        database = Database(f"sqlite:///{data / 'idmint.db'}")
        # Single-use tokens for every round at up to --token-rate requests/s, + warm-up.
        budget = int(args.seconds * args.token_rate) * args.rounds + 200
        x509_tokens = mint_tokens(database, "spiffe://bench.test/x509", budget)
        jwt_tokens = mint_tokens(database, "spiffe://bench.test/jwt", budget)
        spy_tokens = mint_tokens(database, "spiffe://bench.test/x509", int(args.py_spy * 1500))
        database.close()
        _key, csr = new_key_and_csr()
        return cls(
            name,
            data,
            [_body(t, csr) for t in x509_tokens],
            [_body(t, None) for t in jwt_tokens],
            [_body(t, csr) for t in spy_tokens],
            limits=limits,
            idmint=idmint,
        )

    def start(self, args: argparse.Namespace) -> None:
        unlimited = ("--rate-limit", "none") if self.limits is None else ()
        self.server, self.port = start_server(
            self.data, "--workers", str(args.workers), "--threads", str(args.threads),
            *unlimited, log=self.data.parent / f"{self.name}.log", idmint=self.idmint,
        )  # fmt: skip
        if self.name == "granian":
            self.front, self.port = start_granian(self.data, args)
        bundle = str(self.data / "server" / "bundle.pem")
        # Warm every worker (sessions, caches) before timing.
        run_load(self.port, bundle, self.x509_bodies[-200:], "/v1/svid/x509", args.clients, 1.0)
        run_load(self.port, bundle, self.jwt_bodies[-200:], "/v1/svid/jwt", args.clients, 1.0)

    def round(self, n: int, args: argparse.Namespace, scratch: Path) -> dict[str, dict[str, Any]]:
        share = (len(self.x509_bodies) - 200) // args.rounds
        mine = slice(n * share, (n + 1) * share)
        bundle = str(self.data / "server" / "bundle.pem")
        results: dict[str, dict[str, Any]] = {}
        assert self.server is not None
        measured = [self.server.pid, *self.helpers]
        if self.front is not None:
            measured.append(self.front.pid)
        for kind, bodies, path in (
            ("x509_svid", self.x509_bodies[mine], "/v1/svid/x509"),
            ("jwt_svid", self.jwt_bodies[mine], "/v1/svid/jwt"),
            ("healthz", [], "/healthz"),
        ):
            if kind == "healthz" and args.client != "wrk":
                continue  # the Python client only POSTs
            before = tree_cpu_by_pid(measured)
            if args.client == "wrk":
                result = run_wrk(self.port, bodies, path, args.clients, args.seconds, scratch)
            else:
                result = run_load(self.port, bundle, bodies, path, args.clients, args.seconds)
            after = tree_cpu_by_pid(measured)
            cpu = sum(after.values()) - sum(before.get(pid, 0.0) for pid in after)
            result["cpu_ms_per_request"] = round(cpu * 1000 / max(1, result["ok"]), 3)
            result["cpu_ms_by_process"] = cpu_by_role(before, after, self.roles(), result["ok"])
            results[kind] = result
        return results

    def roles(self) -> dict[int, str]:
        """Each measured process's role, for ``cpu_ms_by_process``."""
        assert self.server is not None
        roles = {self.server.pid: "master", **{pid: "worker" for pid in worker_pids(self.server)}}
        if self.front is not None:
            roles.update({pid: "front" for pid in _tree([self.front.pid])[0]})
        roles.update({pid: "helper" for pid in self.helpers})
        for pid in _tree([self.server.pid])[0] - set(roles):
            roles[pid] = "writer"  # the writer and its standby (children of the master)
        return roles

    def profile(self, args: argparse.Namespace, scratch: Path) -> str:
        """A py-spy profile (raw, collapsed stacks) of one worker under X509 load."""
        assert self.server is not None
        output = str(Path(tempfile.gettempdir()) / f"idmint-http-x509-profile-{self.name}.txt")
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(worker_pids(self.server)[0]),
             "--duration", str(round(args.py_spy)), "--format", "raw", "--output", output,
             "--threads", *(["--gil"] if args.py_spy_gil else []),
             # py-spy reads native stacks only from a paused process
             *(["--native"] if args.py_spy_native else ["--nonblocking"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        run_wrk(self.port, self.spy_bodies, "/v1/svid/x509", args.clients, args.py_spy, scratch)
        spy.wait(timeout=120)
        return output

    def pss(self) -> float:
        """The server's PSS in MiB (master, workers, writer and its standby)."""
        assert self.server is not None
        return tree_pss_mib([self.server.pid, *([self.front.pid] if self.front else [])])

    def stop(self) -> None:
        if self.front is not None:
            self.front.terminate()
            self.front.wait(timeout=30)
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=30)


def start_granian(data: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    """granian (a Rust HTTP/TLS server) running idmint's WSGI app on a free port.

    Same workers and threads as gunicorn's stacks; TLS with the server's
    certificate; the writer of the ``idmint server`` beside it.
    """
    granian = shutil.which("granian", path=str(Path(sys.executable).parent))
    if granian is None:
        raise SystemExit("--stacks granian: pip install granian")
    port = free_port()
    metrics = data / "granian-metrics"
    metrics.mkdir(exist_ok=True)
    environment = {
        **clean_env(),
        "IDMINT_DATA_DIR": str(data),
        "IDMINT_WRITER_SOCKET": str(data / "server" / "writer.sock"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    server = data / "server"
    with (data.parent / "granian.log").open("wb") as log:
        front = subprocess.Popen(
            [granian, "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(args.workers), "--blocking-threads", str(args.threads),
             "--ssl-certificate", str(server / "tls.pem"), "--ssl-keyfile", str(server / "tls.key"),
             "--no-ws", "--log-level", "warning", "benchmarks.granian_app:app"],
            stdout=log, stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip
    wait_ready(front, port, server / "bundle.pem", f"granian (see {data.parent / 'granian.log'})")
    return front, port


def idle_close(port: int, bundle: str, seconds: float) -> dict[str, float | None]:
    """After how many seconds the server closes a connection that sends nothing.

    Two at once: one that never sends its TLS ClientHello, one that completes
    the handshake and never sends a request. None: still open after ``seconds``.
    """
    raw = socket.create_connection(("127.0.0.1", port))
    context = ssl.create_default_context(cafile=bundle)
    quiet = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1"
    )
    pending: dict[str, Any] = {"no_client_hello": raw, "no_request": quiet}
    closed: dict[str, float | None] = dict.fromkeys(pending)
    started = time.monotonic()
    try:
        while pending and time.monotonic() - started < seconds:
            for name, sock in list(pending.items()):
                sock.settimeout(0.5)
                try:
                    if sock.recv(1) == b"":
                        closed[name] = round(time.monotonic() - started, 1)
                        del pending[name]
                except TimeoutError:
                    continue
                except (OSError, ssl.SSLError):  # reset or an alert: closed too
                    closed[name] = round(time.monotonic() - started, 1)
                    del pending[name]
    finally:
        raw.close()
        quiet.close()
    return closed


def cfssl_round(
    cfssl: tuple[subprocess.Popen[bytes], int, str],
    sign_body: bytes,
    args: argparse.Namespace,
    scratch: str,
) -> dict[str, dict[str, Any]]:
    """One round of cfssl: sign (the same CSR again and again), then its cheap GET."""
    results: dict[str, dict[str, Any]] = {}
    for name, bodies, path in (
        ("cfssl_sign", [sign_body], "/api/v1/cfssl/sign"),
        ("cfssl_get", [], "/api/v1/cfssl/scaninfo"),
    ):
        cpu = tree_cpu_seconds([cfssl[0].pid])
        result = run_wrk(
            cfssl[1], bodies, path, args.clients, args.seconds, Path(scratch), repeat=bool(bodies)
        )
        cpu = tree_cpu_seconds([cfssl[0].pid]) - cpu
        result["cpu_ms_per_request"] = round(cpu * 1000 / max(1, result["ok"]), 3)
        results[name] = result
    return results


def paired(on: list[dict[str, Any]], off: list[dict[str, Any]]) -> dict[str, Any]:
    """Round by round ratios of two stacks measured in the same interleaved rounds.

    On a shared machine a round's load hits both stacks of that round alike,
    so the median of per-round ratios is steadier than a ratio of medians.
    """
    rps = [
        round(a["requests_per_second"] / b["requests_per_second"], 3)
        for a, b in zip(on, off, strict=True)
        if b["requests_per_second"]
    ]
    cpu = [
        round(b["cpu_ms_per_request"] / a["cpu_ms_per_request"], 3)
        for a, b in zip(on, off, strict=True)
        if a["cpu_ms_per_request"]
    ]
    return {
        "rps_median": round(statistics.median(rps), 3) if rps else None,
        "rps_rounds": rps,
        "cpu_median": round(statistics.median(cpu), 3) if cpu else None,
        "cpu_rounds": cpu,
    }


def ratios(rounds: dict[str, list[dict[str, Any]]], stack: str) -> dict[str, float]:
    """Median rates of ``stack`` as ratios to cfssl's in the same rounds."""

    def rate(name: str) -> float:
        return float(statistics.median(r["requests_per_second"] for r in rounds[name]))

    sign, get = rate("cfssl_sign"), rate("cfssl_get")
    return {
        "x509_vs_cfssl_sign": round(rate(f"{stack}.x509_svid") / sign, 3),
        "jwt_vs_cfssl_sign": round(rate(f"{stack}.jwt_svid") / sign, 3),
        "healthz_vs_cfssl_get": round(rate(f"{stack}.healthz") / get, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python"
    )
    parser.add_argument("--no-cfssl", action="store_true")
    parser.add_argument(
        "--stacks",
        type=lambda text: [part for part in text.split(",") if part],
        default=["access_log_on", "access_log_off"],
        help="gunicorn servers to compare: " + ", ".join(STACKS),
    )
    parser.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--py-spy-gil", action="store_true", help="profile only GIL holders")
    parser.add_argument("--py-spy-native", action="store_true", help="with native frames (C, Rust)")
    parser.add_argument(
        "--idle-probe",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the rounds: when each stack closes connections that send nothing",
    )
    parser.add_argument(
        "--token-rate",
        type=int,
        default=4000,
        help="single-use join tokens minted per second of load and kind (a long run needs fewer)",
    )
    parser.add_argument("--limits", choices=("off", "redis", "redis-all"), default="off")
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another build's idmint executable, measured as stack NAME (access log on)",
    )
    args = parser.parse_args()
    use_cfssl = not args.no_cfssl and args.client == "wrk" and shutil.which("cfssl") is not None
    levels: list[str] = []
    unknown = [name for name in args.stacks if name not in STACKS]
    if unknown:
        parser.error(f"--stacks: unknown {unknown}; choose from {', '.join(STACKS)}")
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as exits:
        stacks = [
            Stack.prepare(
                Path(scratch),
                name,
                args,
                access_log=(name != "access_log_off"),
                anomaly=(name != "anomaly_off"),
            )
            for name in args.stacks
        ]
        for build in args.build:
            name, _, path = build.partition("=")
            if not name or not os.access(path, os.X_OK):
                parser.error(f"--build {build!r}: want NAME=PATH of an idmint executable")
            stacks.append(Stack.prepare(Path(scratch), name, args, access_log=True, idmint=path))
        if args.limits != "off":
            from tests.redis_server import redis_server

            redis = exits.enter_context(redis_server())
            levels = ["per_address", "per_identity"]
            if args.limits == "redis-all":
                levels += ["trust_domain", "attestation"]
            settings = f'\n[limits]\nstorage = "{redis.url}"\n' + "".join(
                f'{level} = "10000000/minute"\n' for level in levels
            )
            limited = Stack.prepare(
                Path(scratch), "limits_redis", args, access_log=True, limits=settings
            )
            assert redis.process is not None
            limited.helpers = (redis.process.pid,)
            stacks.append(limited)
        rounds: dict[str, list[dict[str, Any]]] = {"cfssl_sign": [], "cfssl_get": []}
        for stack in stacks:
            for kind in ("x509_svid", "jwt_svid", "healthz"):
                rounds[f"{stack.name}.{kind}"] = []
        cfssl = start_cfssl(Path(scratch)) if use_cfssl else None
        sign_body = cfssl_sign_body()
        profile: str | None = None
        try:
            for stack in stacks:
                stack.start(args)
            pss_idle = {stack.name: stack.pss() for stack in stacks}
            # After each round: growth over a long run (--rounds 10 --seconds 20 is 10 minutes).
            pss_rounds: dict[str, list[float]] = {stack.name: [] for stack in stacks}
            pss_split: dict[str, list[dict[str, dict[str, float]]]] = {
                stack.name: [] for stack in stacks
            }
            turns: list[Any] = list(stacks)
            if cfssl is not None:
                turns.append(cfssl)
            for n in range(args.rounds):
                # Interleaved, in turn first and last: drift hits every server alike.
                for turn in turns[:: 1 - 2 * (n % 2)]:
                    if isinstance(turn, Stack):
                        for kind, result in turn.round(n, args, Path(scratch)).items():
                            rounds[f"{turn.name}.{kind}"].append(result)
                    else:
                        for name, result in cfssl_round(turn, sign_body, args, scratch).items():
                            rounds[name].append(result)
                for stack in stacks:
                    pss_rounds[stack.name].append(stack.pss())
                    pss_split[stack.name].append(pss_by_role(stack.roles()))
            pss_after = {stack.name: stack.pss() for stack in stacks}
            if cfssl is not None:
                pss_after["cfssl"] = tree_pss_mib([cfssl[0].pid])
            if args.py_spy and shutil.which("py-spy"):
                profile = stacks[0].profile(args, Path(scratch))
            idle: dict[str, Any] = {}
            if args.idle_probe:
                with concurrent.futures.ThreadPoolExecutor(len(stacks)) as pool:
                    probes = {
                        stack.name: pool.submit(
                            idle_close,
                            stack.port,
                            str(stack.data / "server" / "bundle.pem"),
                            args.idle_probe,
                        )
                        for stack in stacks
                    }
                    idle = {name: probe.result() for name, probe in probes.items()}
        finally:
            for stack in stacks:
                stack.stop()
            if cfssl is not None:
                cfssl[0].terminate()
                cfssl[0].wait(timeout=30)
    first = stacks[0].name
    report: dict[str, Any] = {
        "benchmark": "http",
        "setup": f"gunicorn {args.workers} workers x {args.threads} threads, "
        f"SoftHSM + SQLite, {args.clients} keep-alive HTTPS clients ({args.client}) "
        "on this machine; stacks measured in the same interleaved rounds",
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "stacks": {
            stack.name: {
                kind: summarise(rounds[f"{stack.name}.{kind}"])
                for kind in ("x509_svid", "jwt_svid", "healthz")
            }
            for stack in stacks
        },
        "server_pss_mib": {
            **{
                stack.name: {
                    "idle": pss_idle[stack.name],
                    "after_load": pss_after[stack.name],
                    "after_each_round": pss_rounds[stack.name],
                    "after_each_round_by_process": pss_split[stack.name],
                    # Growth from the first round (warm) to the last, MiB.
                    "growth_after_first_round": round(
                        pss_rounds[stack.name][-1] - pss_rounds[stack.name][0], 1
                    ),
                }
                for stack in stacks
            },
            **({"cfssl": {"after_load": pss_after["cfssl"]}} if "cfssl" in pss_after else {}),
        },
        **(
            {"idle_connection_closed_after_seconds": {"limit": args.idle_probe, **idle}}
            if args.idle_probe
            else {}
        ),
        "cfssl_sign": summarise(rounds["cfssl_sign"]),
        "cfssl_get_scaninfo": summarise(rounds["cfssl_get"]),
        "ratios_vs_cfssl": (
            {stack.name: ratios(rounds, stack.name) for stack in stacks} if cfssl else None
        ),
        "limits_redis": (
            {
                "setup": f"{', '.join(levels)} in one redis-server on loopback, moving window, "
                "rules too high to trip; cpu: server processes + redis-server",
                "vs": first,
                **{
                    f"{what}_{kind}": _ratio(
                        rounds[f"limits_redis.{kind}_svid"], rounds[f"{first}.{kind}_svid"], what
                    )
                    for what in ("rps", "cpu")
                    for kind in ("x509", "jwt")
                },
                "goal_ratio": 0.9,
            }
            if levels
            else None
        ),
        "anomaly_on_vs_off": (
            {
                "setup": "access_log_on (anomaly checks on, baselines learning) "
                "vs anomaly_off ([anomaly] enabled = false); cpu: server processes",
                **{
                    f"{what}_{kind}": _ratio(
                        rounds[f"access_log_on.{kind}_svid"],
                        rounds[f"anomaly_off.{kind}_svid"],
                        what,
                    )
                    for what in ("rps", "cpu")
                    for kind in ("x509", "jwt")
                },
                **{
                    f"paired_{kind}": paired(
                        rounds[f"access_log_on.{kind}_svid"], rounds[f"anomaly_off.{kind}_svid"]
                    )
                    for kind in ("x509", "jwt")
                },
                "goal_ratio": 0.95,
            }
            if {"access_log_on", "anomaly_off"} <= set(args.stacks)
            else None
        ),
        "py_spy_profile_of": first if profile else None,
        "py_spy_profile": profile,
        "goals": {
            "x509_rps": 2000, "jwt_rps": 3000, "p99_ms": 25,
            "x509_vs_cfssl_sign": 0.4, "jwt_vs_cfssl_sign": 0.6, "healthz_vs_cfssl_get": 0.5,
        },
    }  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
