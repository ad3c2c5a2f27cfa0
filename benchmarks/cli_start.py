"""How long ``idmint --help``, ``--version`` and a TAB press take, beside a bare Python start.

Each case is a fresh process, timed from spawn to exit. Rounds are
interleaved (every case once per round, in a shuffled order) so the
machine's drift touches all cases alike; the figure is the median of the
rounds and its difference from ``python -c pass`` measured in the same run
(the goal: within 150 ms). Every round is printed too.

Usage: python benchmarks/cli_start.py [--rounds 15] [--idmint PATH]
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder leads sys.path, and benchmarks/http.py
# would shadow the standard library's ``http`` (prometheus_client imports it).
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import json
import os
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

GOAL_MS = 150


def cases(idmint: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    def complete(words: str) -> dict[str, str]:
        return {
            "_IDMINT_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        }

    return {
        "python -c pass": ([sys.executable, "-c", "pass"], {}),
        "idmint --version": ([idmint, "--version"], {}),
        "idmint --help": ([idmint, "--help"], {}),
        "idmint svid x509 --help": ([idmint, "svid", "x509", "--help"], {}),
        "idmint entry create --help": ([idmint, "entry", "create", "--help"], {}),
        "complete 'idmint en<TAB>'": ([idmint], complete("idmint en")),
        "complete 'idmint entry cr<TAB>'": ([idmint], complete("idmint entry cr")),
        "complete 'idmint authority prepare <TAB>'": (
            [idmint],
            complete("idmint authority prepare "),
        ),
    }


def timed(command: list[str], extra_env: dict[str, str]) -> float:
    env = {**os.environ, **extra_env}
    began = time.perf_counter()
    subprocess.run(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return (time.perf_counter() - began) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--idmint", default=str(Path(sys.executable).parent / "idmint"))
    args = parser.parse_args()
    table = cases(args.idmint)
    for command, env in table.values():  # warm the page cache and .pyc files
        timed(command, env)
    rounds: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.rounds):
        order = list(table)
        random.shuffle(order)
        for name in order:
            rounds[name].append(timed(*table[name]))
    baseline = statistics.median(rounds["python -c pass"])
    results: dict[str, dict[str, Any]] = {
        name: {
            "median_ms": round(statistics.median(values), 1),
            "over_baseline_ms": round(statistics.median(values) - baseline, 1),
            "rounds_ms": [round(v, 1) for v in values],
        }
        for name, values in rounds.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "cli_start",
                "setup": f"{args.rounds} interleaved rounds, fresh process each, "
                f"{os.cpu_count()} CPUs shared with whatever else runs",
                "idmint": args.idmint,
                "baseline_ms": round(baseline, 1),
                "goal_over_baseline_ms": GOAL_MS,
                "within_goal": {
                    name: result["over_baseline_ms"] <= GOAL_MS
                    for name, result in results.items()
                    if name != "python -c pass"
                },
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
