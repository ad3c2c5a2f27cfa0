#!/usr/bin/env bash
# Usage: rotate_root.sh DATA_DIR [WAIT_SECONDS]
# The root rotation runbook (README.md), all steps in a row.
set -euo pipefail
data_dir=$1
wait_seconds=${2:-0}
idmint="${IDMINT:-idmint}"
step() { echo; echo "== $*"; }

step "current authorities"
"$idmint" authority list --data-dir "$data_dir"
old_root=$("$idmint" authority list --data-dir "$data_dir" --output json |
    python3 -c 'import json,sys; print(next(a["id"] for a in json.load(sys.stdin) if a["kind"] == "root" and a["state"] == "active"))')

step "1. prepare a new root (published in the bundle now)"
"$idmint" authority prepare root --data-dir "$data_dir"
sleep "$wait_seconds"

step "2. activate it (the old root is retired, still trusted)"
"$idmint" authority activate root --data-dir "$data_dir"

step "3. move the intermediate onto the new root"
"$idmint" authority prepare intermediate --data-dir "$data_dir"
"$idmint" authority activate intermediate --data-dir "$data_dir"
sleep "$wait_seconds"

step "4. remove the old root (id $old_root)"
"$idmint" authority revoke root --id "$old_root" --data-dir "$data_dir"

step "5. the audit log"
"$idmint" audit verify --data-dir "$data_dir"
"$idmint" authority list --data-dir "$data_dir"
