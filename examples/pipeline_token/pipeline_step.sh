#!/usr/bin/env bash
# Usage: pipeline_step.sh SERVER BUNDLE CI_TOKEN_FILE AUDIENCE SERVICE_URL
# Trades the CI job's OIDC token for a JWT-SVID and calls the service with it.
set -euo pipefail
server=$1 bundle=$2 token_file=$3 audience=$4 service=$5
idmint="${IDMINT:-idmint}"
jwt=$("$idmint" svid jwt --server "$server" --bundle "$bundle" \
    --oidc-token-file "$token_file" --audience "$audience")
curl --silent --show-error --fail -H "Authorization: Bearer $jwt" "$service"
