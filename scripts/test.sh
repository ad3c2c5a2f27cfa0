#!/usr/bin/env bash
# Install everything the tests need (Debian's softhsm2, opensc, postgresql;
# the package with its test extras), lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
export PATH="/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -V | tail -1)/bin:$PATH"
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/mypy examples/mtls_pair/mtls_pair.py examples/pipeline_token/service.py examples/nginx_mtls/client.py examples/pipeline_token/fake_ci.py
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "idmint: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit $status
