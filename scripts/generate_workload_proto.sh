#!/usr/bin/env bash
# Regenerate agent/proto/workload_pb2*.py from agent/proto/workload.proto
# (the SPIFFE Workload API, from go-spiffe). Needs grpcio-tools (in the
# [test] extra). The generated files are not edited by hand; this script
# makes one mechanical change to them, below.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
# Through the idmint/agent symlink: the protos register as
# idmint/agent/proto/workload.proto and import as idmint.agent.proto.
"$python" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
    idmint/agent/proto/workload.proto
# The spec's workload.proto has no package, so its messages are top-level
# names (X509SVIDRequest, ...). py-spiffe registers the same names in
# protobuf's default descriptor pool, and a second registration there fails
# ("duplicate symbol"), so a process could not import both. Ours go into a
# pool of their own (holding struct.proto, which they import); the messages
# on the wire are the same.
"$python" - <<'PY'
from pathlib import Path

path = Path("agent/proto/workload_pb2.py")
text = path.read_text()
default = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
assert text.count(default) == 1, "protoc's output changed: review this script"
text = text.replace(
    default,
    "# A pool of our own: see scripts/generate_workload_proto.sh.\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "_POOL.AddSerializedFile(google_dot_protobuf_dot_struct__pb2.DESCRIPTOR.serialized_pb)\n"
    "DESCRIPTOR = _POOL.AddSerializedFile(",
)
path.write_text(text)
PY
