#!/usr/bin/env bash
# Set up and run idmint on the embedded default (a SoftHSM token and SQLite in
# one data directory). Data directory: $IDMINT_DATA_DIR or ./demo-data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
data_dir="${IDMINT_DATA_DIR:-$PWD/demo-data}"
trust_domain="${IDMINT_TRUST_DOMAIN:-demo.idmint.test}"
if [[ ! -f "$data_dir/idmint.toml" ]]; then
    .venv/bin/idmint init --data-dir "$data_dir" --trust-domain "$trust_domain"
else
    echo "Trust domain already initialised in $data_dir; its root:"
    .venv/bin/idmint bundle show --data-dir "$data_dir"
fi
echo
echo "Keys on the token (never extractable):"
.venv/bin/idmint hsm keys --data-dir "$data_dir"
