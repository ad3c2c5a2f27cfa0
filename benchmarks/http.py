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

``--limits redis`` adds a second server on a copy of the data directory
with its rate limits in a redis-server started for the run: the default
levels (per address and per identity), or with ``redis-all`` every level
(also per trust domain and attestation attempts); rules too high to trip,
so each request pays for every count. Its rounds run interleaved with the
first server's (limits off); the JSON gives the ratio of requests/s (goal
>= 0.9) and of the CPU time the server processes (and redis-server) spent
per request, which the noise of a shared machine disturbs less.

Usage: python benchmarks/http.py [--seconds 5] [--rounds 3] [--clients 16] [--workers 2]
                                 [--client wrk|python] [--limits off|redis|redis-all]
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder leads sys.path and this file would
# shadow the standard library's ``http`` package.
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import contextlib
import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serving import IDMINT as IDMINT_PATH
from benchmarks.serving import clean_env, start_server
from idmint.attestation.join_token import new_token, token_hash
from idmint.ca.storage.db import Database
from idmint.client import new_key_and_csr, x509_request

IDMINT = [IDMINT_PATH]


def mint_tokens(database: Database, spiffe_id: str, count: int) -> list[str]:
    """Join tokens inserted in bulk (setup only; the API path is tested elsewhere)."""
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
  if args[1] == "-" then return end
  local n, threads = 0, tonumber(args[2])
  for line in io.lines(args[1]) do
    if n % threads == id then bodies[#bodies + 1] = line end
    n = n + 1
  end
end
function request()
  if #bodies == 0 then return wrk.format("GET") end
  next_body = next_body + 1
  local body = bodies[next_body] or "{}"
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
    port: int, bodies: list[bytes], path: str, clients: int, seconds: float, scratch: Path
) -> dict[str, Any]:
    """``bodies`` POSTed once each; none: GET ``path`` again and again."""
    threads = 2
    body_file, script = scratch / "bodies.jsonl", scratch / "load.lua"
    body_file.write_bytes(b"\n".join(bodies) + b"\n")
    script.write_text(WRK_SCRIPT)
    completed = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s",
            "-s", str(script), f"https://127.0.0.1:{port}{path}", "--",
            str(body_file) if bodies else "-", str(threads),
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


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system) of ``roots`` and all their descendants, from /proc."""
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
    return sum(ticks.get(pid, 0) for pid in wanted) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python"
    )
    parser.add_argument("--limits", choices=("off", "redis", "redis-all"), default="off")
    args = parser.parse_args()
    environment = clean_env()
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        data = Path(scratch) / "data"
        subprocess.run(
            [*IDMINT, "init", "--data-dir", str(data), "--trust-domain", "bench.test"],
            check=True,
            capture_output=True,
            env=environment,
        )
        for name in ("x509", "jwt"):
            subprocess.run(
                [
                    *IDMINT,
                    "entry",
                    "create",
                    "--data-dir",
                    str(data),
                    "--spiffe-id",
                    f"spiffe://bench.test/{name}",
                    "--selector",
                    "join_token:any:true",
                    "--owner",
                    "bench",
                    "--expires-at",
                    "1d",
                    "--audience",
                    "bench",
                ],
                check=True,
                capture_output=True,
                env=environment,
            )
        database = Database(f"sqlite:///{data / 'idmint.db'}")
        # Single-use tokens for every round at up to 4,000 requests/s, + warm-up.
        budget = int(args.seconds * 4000) * args.rounds + 200
        x509_tokens = mint_tokens(database, "spiffe://bench.test/x509", budget)
        jwt_tokens = mint_tokens(database, "spiffe://bench.test/jwt", budget)
        database.close()
        limited = None
        if args.limits != "off":
            from tests.redis_server import redis_server

            redis = stack.enter_context(redis_server())
            # A copy after minting: the same tokens work once on each server.
            limited = Path(scratch) / "data-limits"
            shutil.copytree(data, limited)
            levels = ["per_address", "per_identity"]
            if args.limits == "redis-all":
                levels += ["trust_domain", "attestation"]
            with (limited / "idmint.toml").open("a") as config:
                config.write(f'\n[limits]\nstorage = "{redis.url}"\n')
                config.write("".join(f'{level} = "10000000/minute"\n' for level in levels))
        _key, csr = new_key_and_csr()
        x509_bodies = [
            json.dumps(x509_request({"type": "join_token", "token": t}, csr)).encode()
            for t in x509_tokens
        ]
        jwt_bodies = [
            json.dumps(
                {"attestation": {"type": "join_token", "token": t}, "audience": "bench"}
            ).encode()
            for t in jwt_tokens
        ]
        server, port = start_server(
            data, "--workers", str(args.workers), "--threads", str(args.threads),
            "--rate-limit", "none", log=Path(scratch) / "server.log",
        )  # fmt: skip
        variants = {"": (server, port, str(data / "server" / "bundle.pem"))}
        measured = {"": [server.pid]}
        if limited is not None:
            limited_server, limited_port = start_server(
                limited, "--workers", str(args.workers), "--threads", str(args.threads),
                log=Path(scratch) / "server-limits.log",
            )  # fmt: skip
            assert redis.process is not None
            measured["limits_"] = [limited_server.pid, redis.process.pid]
            variants["limits_"] = (
                limited_server,
                limited_port,
                str(limited / "server" / "bundle.pem"),
            )
        rounds: dict[str, list[dict[str, Any]]] = {
            f"{v}{name}": [] for v in variants for name in ("x509_svid", "jwt_svid", "healthz")
        }
        try:
            # Warm every worker (sessions, caches) before timing.
            for _, port, bundle in variants.values():
                run_load(port, bundle, x509_bodies[-200:], "/v1/svid/x509", args.clients, 1.0)
                run_load(port, bundle, jwt_bodies[-200:], "/v1/svid/jwt", args.clients, 1.0)
            share = (len(x509_bodies) - 200) // args.rounds
            for n in range(args.rounds):
                mine = slice(n * share, (n + 1) * share)
                for name, bodies, path in (
                    ("x509_svid", x509_bodies[mine], "/v1/svid/x509"),
                    ("jwt_svid", jwt_bodies[mine], "/v1/svid/jwt"),
                ):
                    # Interleaved, first one then the other first: drift hits both alike.
                    for variant, (_, port, bundle) in list(variants.items())[:: 1 - 2 * (n % 2)]:
                        cpu = tree_cpu_seconds(measured[variant])
                        if args.client == "wrk":
                            result = run_wrk(
                                port, bodies, path, args.clients, args.seconds, Path(scratch)
                            )
                        else:
                            result = run_load(
                                port, bundle, bodies, path, args.clients, args.seconds
                            )
                        cpu = tree_cpu_seconds(measured[variant]) - cpu
                        result["cpu_ms_per_request"] = round(cpu * 1000 / max(1, result["ok"]), 3)
                        rounds[variant + name].append(result)
                if args.client == "wrk":
                    for variant, (_, port, _) in variants.items():
                        rounds[variant + "healthz"].append(
                            run_wrk(port, [], "/healthz", args.clients, args.seconds, Path(scratch))
                        )
        finally:
            for process, _, _ in variants.values():
                process.terminate()
                process.wait(timeout=30)
    limits_figures: dict[str, Any] = {}
    if limited is not None:
        limits_figures["limits_redis"] = {
            "setup": f"{', '.join(levels)} in one redis-server on loopback, moving window, "
            "rules too high to trip; cpu: server processes + redis-server",
            "x509_svid": summarise(rounds["limits_x509_svid"]),
            "jwt_svid": summarise(rounds["limits_jwt_svid"]),
            # Median over median, both measured interleaved in this run.
            "ratio_x509": _ratio(rounds["limits_x509_svid"], rounds["x509_svid"]),
            "ratio_jwt": _ratio(rounds["limits_jwt_svid"], rounds["jwt_svid"]),
            "cpu_ratio_x509": _ratio(rounds["limits_x509_svid"], rounds["x509_svid"], "cpu"),
            "cpu_ratio_jwt": _ratio(rounds["limits_jwt_svid"], rounds["jwt_svid"], "cpu"),
            "goal_ratio": 0.9,
        }
    print(
        json.dumps(
            {
                "benchmark": "http",
                "setup": f"gunicorn {args.workers} workers x {args.threads} threads, "
                f"SoftHSM + SQLite, {args.clients} keep-alive HTTPS clients ({args.client}) "
                "on this machine",
                "seconds_per_round": args.seconds,
                "rounds": args.rounds,
                "x509_svid": summarise(rounds["x509_svid"]),
                "jwt_svid": summarise(rounds["jwt_svid"]),
                "baseline_healthz": summarise(rounds["healthz"]),
                "goals": {"x509_rps": 2000, "jwt_rps": 3000, "p99_ms": 25},
                **limits_figures,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
