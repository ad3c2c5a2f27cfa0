"""The node agent: Workload API latency, batch signing, and the cost of holding 1,000 entries.

Starts ``idmint server`` on a fresh data directory and ``idmint agent`` on a
Unix socket, then measures, each beside a baseline from the same run:

1. FetchX509SVID, first message from the cache (new stream per call, then
   cancelled), p50/p99 over ``--calls`` calls, beside a bare gRPC unary call
   (the agent's ``Ping``: no attestation, empty reply) on the same socket and
   channel, interleaved in rounds.
2. Batch signing through ``POST /v1/agent/x509`` (``--batch`` CSRs per
   request, one worker): SVIDs per second (median of 5 batches a round),
   beside ``1/(t_sign + t_verify)`` measured in this process on the same HSM
   token just before each round: one leaf signed with the active
   intermediate key plus one CSR signature check.
3. With ``--entries`` entries parented to the agent: the agent's RSS once it
   holds an SVID for each, and the server's CPU per sync that finds nothing
   changed (``If-None-Match`` -> 304), beside its CPU per ``GET /healthz``.

The client side uses py-spiffe's generated stubs (this process never imports
the agent's own). Prints JSON.

Usage: python benchmarks/agent.py [--calls 1000] [--rounds 5] [--batch 100] [--entries 1000]
"""

from __future__ import annotations

import sys

sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import base64
import copy
import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe._proto import workload_pb2, workload_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serving import IDMINT, clean_env, free_port, start_server
from idmint.ca.authority.authorities import active, signing_key
from idmint.ca.config import load
from idmint.ca.issuance.entries import record_change
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuthorityKind, Entry
from idmint.ca.x509.csr import check_csr
from idmint.ca.x509.profiles import random_serial, signature_hash
from idmint.ca.x509.x509svid import leaf_certificate, svid_window
from idmint.cli.admin_client import call as admin_call
from idmint.hsm import KeyStore
from idmint.pop import make_proof

HEADER = [("workload.spiffe.io", "true")]


def csr_pem(key: Any) -> str:
    from cryptography import x509

    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Https:
    """HTTPS calls to the server: a new connection each, or one kept (``keep_alive``)."""

    def __init__(self, port: int, bundle: str, keep_alive: bool = False) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=bundle)
        self.keep_alive = keep_alive
        self._kept: http.client.HTTPSConnection | None = None

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        connection = self._kept or http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=60
        )
        try:
            payload = None if body is None else json.dumps(body).encode()
            sent = {"Content-Type": "application/json"} if payload else {}
            connection.request(method, path, body=payload, headers={**sent, **(headers or {})})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            if self.keep_alive:
                self._kept = connection
            else:
                connection.close()


class AgentIdentity:
    """An agent SVID held by the benchmark (to call the agent API as an agent would)."""

    def __init__(self, https: Https, token: str) -> None:
        self.https = https
        self.key = ec.generate_private_key(ec.SECP256R1())
        status, body = https.call(
            "POST",
            "/v1/agent/attest",
            {"attestation": {"type": "join_token", "token": token}, "csr": csr_pem(self.key)},
        )
        assert status == 201, body
        issued = json.loads(body)
        self.spiffe_id, self.chain = issued["spiffe_id"], issued["chain_pem"]

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        proof = make_proof(self.chain, self.key, "agent", f"{method} {path}\n".encode() + payload)
        header = base64.b64encode(json.dumps(proof).encode()).decode()
        return self.https.call(
            method, path, body, {"X-Idmint-Agent-Proof": header, **(headers or {})}
        )


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and all its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            fields = stats[current]
            total += (int(fields[11]) + int(fields[12])) / ticks
        todo.extend(children.get(current, ()))
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_agent(server: str, bundle: str, token: str, directory: Path) -> tuple[Any, Path, int]:
    socket_path = directory / "agent.sock"
    health = free_port()
    log = (directory / "agent.log").open("wb")
    process = subprocess.Popen(
        [
            IDMINT,
            "agent",
            "--server",
            server,
            "--bundle",
            bundle,
            "--socket",
            str(socket_path),
            "--health-listen",
            f"127.0.0.1:{health}",
            "--sync-interval",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**clean_env(), "IDMINT_JOIN_TOKEN": token},
    )
    return process, socket_path, health


def agent_health(port: int) -> dict[str, Any]:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        result: dict[str, Any] = json.loads(connection.getresponse().read())
        return result
    except OSError:
        return {}


def wait_svids(port: int, count: int, process: Any, timeout: float = 300) -> float:
    started = time.monotonic()
    while agent_health(port).get("svids", -1) < count:
        if process.poll() is not None or time.monotonic() - started > timeout:
            raise SystemExit(f"the agent did not get its SVIDs: {agent_health(port)}")
        time.sleep(0.2)
    return time.monotonic() - started


def bulk_entries(database: Database, parent: str, count: int, prefix: str) -> None:
    """Entries inserted in bulk (setup only; the admin API path is tested elsewhere)."""
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with database.session() as session:
        # The change log too: a running server's entry index follows it.
        record_change(session, ids, now)
        for n, entry_id in enumerate(ids):
            session.add(
                Entry(
                    id=entry_id,
                    spiffe_id=f"spiffe://bench.test/{prefix}/{n}",
                    selectors=[f"unix:uid:{100000 + n}"],
                    x509_ttl_seconds=3600,
                    jwt_ttl_seconds=300,
                    audiences=[],
                    dns_names=[],
                    owner="bench",
                    expires_at=now + timedelta(days=1),
                    admin=False,
                    disabled=False,
                    created_at=now,
                    updated_at=now,
                    parent_id=parent,
                    node_selectors=[],
                )
            )


def fetch_latency(socket_path: Path, calls: int, rounds: int) -> dict[str, Any]:
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    ping = channel.unary_unary("/idmint.agent.v1.Agent/Ping")

    def fetch() -> None:
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        assert next(stream).svids
        stream.cancel()

    for _ in range(50):  # warm up both paths
        fetch()
        ping(b"")
    fetch_times: list[float] = []
    ping_times: list[float] = []
    per_round = max(1, calls // rounds)
    rounds_out = []
    for _ in range(rounds):
        f_round, p_round = [], []
        for _ in range(per_round):
            start = time.perf_counter()
            fetch()
            f_round.append(time.perf_counter() - start)
            start = time.perf_counter()
            ping(b"")
            p_round.append(time.perf_counter() - start)
        fetch_times += f_round
        ping_times += p_round
        rounds_out.append(
            {
                "fetch_p50_ms": round(statistics.median(f_round) * 1e3, 3),
                "fetch_p99_ms": round(percentile(f_round, 0.99) * 1e3, 3),
                "ping_p50_ms": round(statistics.median(p_round) * 1e3, 3),
                "ping_p99_ms": round(percentile(p_round, 0.99) * 1e3, 3),
            }
        )
    channel.close()
    return {
        "calls": len(fetch_times),
        "fetch_x509_svid_p50_ms": round(statistics.median(fetch_times) * 1e3, 3),
        "fetch_x509_svid_p99_ms": round(percentile(fetch_times, 0.99) * 1e3, 3),
        "baseline_unary_p50_ms": round(statistics.median(ping_times) * 1e3, 3),
        "baseline_unary_p99_ms": round(percentile(ping_times, 0.99) * 1e3, 3),
        "p99_over_baseline_ms": round(
            (percentile(fetch_times, 0.99) - percentile(ping_times, 0.99)) * 1e3, 3
        ),
        "rounds": rounds_out,
    }


def sign_verify_baseline(data: Path, samples: int = 200) -> float:
    """Seconds for one HSM leaf signature plus one CSR check, in this process."""
    config = load(data)
    database = Database(config.database_url)
    keystore = KeyStore(config.hsm)
    try:
        row = active(database, AuthorityKind.INTERMEDIATE)
        from cryptography import x509

        assert row.certificate_pem is not None
        ca = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        key = signing_key(keystore, row)
        digest = signature_hash(key.public_key())
        csr = csr_pem(ec.generate_private_key(ec.SECP256R1())).encode()
        checked = check_csr(csr)
        now = datetime.now(UTC)
        not_before, not_after = svid_window(now, timedelta(minutes=10), ca.not_valid_after_utc)
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            check_csr(csr)
            leaf_certificate(
                checked.public_key,
                "spiffe://bench.test/x",
                (),
                ca,
                not_before,
                not_after,
                random_serial(),
            ).sign(key, digest)
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        keystore.close()
        database.close()


def batch_rate(
    identity: AgentIdentity, entry_ids: list[str], batch: int, rounds: int
) -> list[float]:
    rates = []
    for _ in range(rounds):
        requests = [
            {
                "entry_id": entry_ids[n % len(entry_ids)],
                "csr": csr_pem(ec.generate_private_key(ec.SECP256R1())),
            }
            for n in range(batch)
        ]
        start = time.perf_counter()
        status, body = identity.call("POST", "/v1/agent/x509", {"requests": requests})
        elapsed = time.perf_counter() - start
        assert status == 201, body
        rates.append(batch / elapsed)
    return rates


def sync_cost(server_pid: int, identity: AgentIdentity, https: Https, syncs: int) -> dict[str, Any]:
    """Server CPU per unchanged sync and per /healthz: on new connections (a TLS
    handshake each) and on one kept connection (as the agent syncs)."""
    status, _ = identity.call("GET", "/v1/agent/entries")
    assert status == 200
    _, body = identity.call("GET", "/v1/agent/entries")
    etag = '"' + json.loads(body)["revision"] + '"'
    kept = Https(https.port, "", keep_alive=True)
    kept.context = https.context
    kept_identity = copy.copy(identity)
    kept_identity.https = kept
    results: dict[str, list[float]] = {
        "sync_304": [], "healthz": [], "sync_304_keep_alive": [], "healthz_keep_alive": [],
    }  # fmt: skip
    for _ in range(3):
        for suffix, who, plain in (("", identity, https), ("_keep_alive", kept_identity, kept)):
            before = tree_cpu(server_pid)
            for _ in range(syncs):
                status, _ = who.call("GET", "/v1/agent/entries", headers={"If-None-Match": etag})
                assert status == 304
            results["sync_304" + suffix].append((tree_cpu(server_pid) - before) / syncs)
            before = tree_cpu(server_pid)
            for _ in range(syncs):
                assert plain.call("GET", "/healthz")[0] == 200
            results["healthz" + suffix].append((tree_cpu(server_pid) - before) / syncs)

    def median_ms(name: str) -> float:
        return round(statistics.median(results[name]) * 1e3, 3)

    return {
        "server_cpu_ms_per_unchanged_sync": median_ms("sync_304"),
        "server_cpu_ms_per_healthz": median_ms("healthz"),
        "server_cpu_ms_per_unchanged_sync_keep_alive": median_ms("sync_304_keep_alive"),
        "server_cpu_ms_per_healthz_keep_alive": median_ms("healthz_keep_alive"),
        "rounds_ms": {k: [round(v * 1e3, 3) for v in vs] for k, vs in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--syncs", type=int, default=50)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="idmint-bench-agent-"))
    os.chmod(base, 0o755)
    server = agent = None
    try:
        data = base / "data"
        subprocess.run(
            [IDMINT, "init", "--data-dir", str(data), "--trust-domain", "bench.test"],
            check=True,
            capture_output=True,
            env=clean_env(),
        )
        server, port = start_server(
            data, "--workers", "1", "--rate-limit", "none", log=base / "server.log"
        )
        bundle = str(data / "server" / "bundle.pem")
        https = Https(port, bundle)
        url = f"https://127.0.0.1:{port}"
        token = admin_call(data, "POST", "/v1/agent-tokens", {"ttl_seconds": 600})
        agent_id = token["spiffe_id"]
        admin_call(
            data,
            "POST",
            "/v1/entries",
            {
                "spiffe_id": "spiffe://bench.test/me",
                "selectors": [f"unix:uid:{os.geteuid()}"],
                "owner": "bench",
                "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
                "parent_id": agent_id,
            },
        )
        agent, socket_path, health = start_agent(url, bundle, token["token"], base)
        wait_svids(health, 1, agent)
        result: dict[str, Any] = {
            "fetch_x509_svid": fetch_latency(socket_path, args.calls, args.rounds)
        }

        # Batch signing, as a second agent (so the running one's state is untouched).
        identity = AgentIdentity(
            https, admin_call(data, "POST", "/v1/agent-tokens", {"ttl_seconds": 600})["token"]
        )
        database = Database(load(data).database_url)
        bulk_entries(database, identity.spiffe_id, 10, "batch")
        with database.reading() as session:
            from sqlalchemy import select

            ids = list(
                session.scalars(select(Entry.id).where(Entry.parent_id == identity.spiffe_id))
            )
        time.sleep(1.2)  # the server's entry cache
        # Baseline and batch in turn, each round: the machine's speed drifts,
        # and a ratio of two figures from different minutes drifts with it.
        rates: list[float] = []
        limits: list[float] = []
        for _ in range(args.rounds):
            limits.append(sign_verify_baseline(data, samples=100))
            # Several batches a round: one batch of 100 lasts ~50 ms, short
            # enough for a scheduler hiccup to halve it.
            rates.append(statistics.median(batch_rate(identity, ids, args.batch, 5)))
        ratios = [rate * per for rate, per in zip(rates, limits, strict=True)]
        result["batch_signing"] = {
            "batch": args.batch,
            "svids_per_second_median": round(statistics.median(rates), 1),
            "rounds": [round(r, 1) for r in rates],
            "baseline_1_over_sign_plus_verify": round(1 / statistics.median(limits), 1),
            "baseline_rounds": [round(1 / per, 1) for per in limits],
            "t_sign_plus_verify_ms": round(statistics.median(limits) * 1e3, 3),
            "ratio": round(statistics.median(ratios), 3),
            "ratio_rounds": [round(r, 3) for r in ratios],
            "goal_ratio": 0.6,
        }

        # 1,000 entries parented to the running agent.
        bulk_entries(database, agent_id, args.entries, "many")
        database.close()
        took = wait_svids(health, args.entries + 1, agent)
        result["many_entries"] = {
            "entries": args.entries,
            "seconds_until_all_svids_held": round(took, 2),
            "agent_rss_mib": round(rss_mib(agent.pid), 1),
            **sync_cost(server.pid, _many_identity(https, data, args.entries), https, args.syncs),
        }
        print(json.dumps(result, indent=2))
    finally:
        for process in (agent, server):
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        if os.environ.get("IDMINT_BENCH_KEEP"):
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def _many_identity(https: Https, data: Path, count: int) -> AgentIdentity:
    """Another agent with ``count`` entries, whose syncs the benchmark makes itself."""
    identity = AgentIdentity(
        https, admin_call(data, "POST", "/v1/agent-tokens", {"ttl_seconds": 600})["token"]
    )
    db = Database(load(data).database_url)
    try:
        bulk_entries(db, identity.spiffe_id, count, "sync")
    finally:
        db.close()
    time.sleep(1.2)
    return identity


if __name__ == "__main__":
    main()
