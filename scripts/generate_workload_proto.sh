#!/usr/bin/env bash
# Regenerate agent/proto/workload_pb2*.py from agent/proto/workload.proto
# (the SPIFFE Workload API, from go-spiffe). Needs grpcio-tools (the [agent]
# extra's build tool). The generated files are not edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
# Through the idmint/agent symlink: the protos register as
# idmint/agent/proto/workload.proto and import as idmint.agent.proto.
"$python" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
    idmint/agent/proto/workload.proto
