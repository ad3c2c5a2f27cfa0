"""Time from process start to a usable SSLContext for a workload.

Starts ``idmint server`` on a fresh embedded-default data directory, then 50
times launches a Python process that calls ``idmint.workload.start()`` with
a join token and builds a client context, and 50 times a bare Python
process, timing each from spawn until it prints ``ready``. Prints JSON with
p50/p99 of both and of the difference (the cost beyond Python's own start),
and of a process that only imports ``ssl`` and ``cryptography.x509``: the
floor for any client that makes its own key and CSR. Then 50 starts of a
service that takes its contexts from files a helper keeps current
(``idmint.workload.from_directory``, as beside ``idmint svid x509 --watch``).

Usage: python benchmarks/startup.py [--runs 50]
"""

from __future__ import annotations

import sys

# benchmarks/http.py would shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("idmint", "ca", "attestation", "hsm")
sys.path.insert(0, str(ROOT))

from benchmarks.serving import IDMINT, clean_env, start_server

# What any client that makes its own key and CSR must import: the floor
# under the workload's figure.
FLOOR = (
    "import ssl\n"
    "from cryptography import x509\n"
    "from cryptography.hazmat.primitives.asymmetric import ec\n"
    "print('ready', flush=True)\n"
)

# A service beside a helper (idmint svid x509 --watch --out DIR) that keeps
# the files current: no evidence, no key generation, no request.
FILES_CHILD = (
    "from idmint.workload import from_directory\n"
    "import sys\n"
    "w = from_directory(sys.argv[1])\n"
    "w.client_context()\n"
    "print('ready', flush=True)\n"
    "w.close()\n"
)

CHILD = (
    "from idmint.workload import start\n"
    "import sys\n"
    "w = start(sys.argv[1], sys.argv[2], {'type': 'join_token', 'token': sys.argv[3]})\n"
    "w.client_context()\n"
    "print('ready', flush=True)\n"
    "w.close()\n"
)


def timed(command: list[str]) -> float:
    began = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    elapsed = time.perf_counter() - began
    child.communicate(timeout=30)
    if line.strip() != "ready":
        raise SystemExit(f"child failed: {line!r}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def milliseconds(values: list[float]) -> dict[str, float]:
    """p50 and p99 of ``values`` (seconds) in milliseconds."""
    return {
        "p50": round(percentile(values, 0.5) * 1000, 1),
        "p99": round(percentile(values, 0.99) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    env = clean_env()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        subprocess.run(
            [IDMINT, "init", "--data-dir", str(data), "--trust-domain", "s.test"],
            check=True,
            capture_output=True,
            env=env,
        )
        subprocess.run(
            [
                IDMINT,
                "entry",
                "create",
                "--data-dir",
                str(data),
                "--spiffe-id",
                "spiffe://s.test/w",
                "--selector",
                "join_token:any:true",
                "--owner",
                "bench",
                "--expires-at",
                "1d",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        tokens = [
            subprocess.run(
                [
                    IDMINT,
                    "token",
                    "create",
                    "--data-dir",
                    str(data),
                    "--spiffe-id",
                    "spiffe://s.test/w",
                ],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout.strip()
            for _ in range(args.runs + 3)
        ]
        # An installed package has its bytecode compiled (pip does it); an
        # editable checkout run with PYTHONDONTWRITEBYTECODE would otherwise
        # compile idmint from source in every child.
        subprocess.run([sys.executable, "-m", "compileall", "-q", *PACKAGES], check=True, cwd=ROOT)
        server, port = start_server(data)
        bundle = str(data / "server" / "bundle.pem")
        url = f"https://127.0.0.1:{port}"
        try:
            timed([sys.executable, "-c", CHILD, url, bundle, tokens.pop()])  # warm caches
            workload = [
                timed([sys.executable, "-c", CHILD, url, bundle, tokens.pop()])
                for _ in range(args.runs)
            ]
            bare = [
                timed([sys.executable, "-c", "print('ready', flush=True)"])
                for _ in range(args.runs)
            ]
            floor = [timed([sys.executable, "-c", FLOOR]) for _ in range(args.runs)]
            helper_out = Path(scratch) / "svid"
            subprocess.run(
                [
                    IDMINT, "svid", "x509", "--server", url, "--bundle", bundle,
                    "--join-token", tokens.pop(), "--out", str(helper_out),
                ],
                check=True, capture_output=True, env=env,
            )  # fmt: skip
            files = [
                timed([sys.executable, "-c", FILES_CHILD, str(helper_out)])
                for _ in range(args.runs)
            ]
        finally:
            server.terminate()
            server.wait(timeout=30)
    beyond = [w - statistics.median(bare) for w in workload]
    floor_beyond = [f - statistics.median(bare) for f in floor]
    files_beyond = [f - statistics.median(bare) for f in files]
    print(
        json.dumps(
            {
                "benchmark": "startup",
                "runs": args.runs,
                "workload_to_ssl_context_ms": milliseconds(workload),
                "bare_python_ms": milliseconds(bare),
                "beyond_python_startup_ms": milliseconds(beyond),
                "from_helper_files_beyond_python_ms": milliseconds(files_beyond),
                "imports_ssl_and_cryptography_x509_beyond_python_ms": milliseconds(floor_beyond),
                "goal_p99_beyond_ms": 50,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
