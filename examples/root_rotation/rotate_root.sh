#!/usr/bin/env bash
# Usage: rotate_root.sh DATA_DIR [WAIT_SECONDS] [--remove-old-root-now]
# The root rotation runbook (README.md), all steps in a row. The old root
# stays in the bundle (retired) until nothing issued under it can still be
# valid; the server then removes it by itself. --remove-old-root-now revokes
# it at once instead: SVIDs still chaining to it stop validating.
set -euo pipefail
data_dir=$1
wait_seconds=${2:-0}
remove_now=0
[[ "${3:-}" == "--remove-old-root-now" ]] && remove_now=1
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

if ((remove_now)); then
    step "4. remove the old root now (id $old_root): SVIDs under it stop validating"
    "$idmint" authority revoke root --id "$old_root" --data-dir "$data_dir"
else
    step "4. the old root (id $old_root) stays trusted until nothing under it is valid"
    echo "the server removes it by itself then; to remove it early:"
    echo "  idmint authority revoke root --id $old_root --data-dir $data_dir"
fi

step "5. the audit log: intact, and every step of the rotation with who did it"
"$idmint" audit verify --data-dir "$data_dir"
"$idmint" audit list --data-dir "$data_dir" --action authority
"$idmint" authority list --data-dir "$data_dir"
