#!/usr/bin/env bash
# Set up and run idmint on the embedded default (a SoftHSM token and SQLite in
# one data directory), then serve the HTTPS API. Data directory:
# $IDMINT_DATA_DIR or ./demo-data. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
data_dir="${IDMINT_DATA_DIR:-$PWD/demo-data}"
trust_domain="${IDMINT_TRUST_DOMAIN:-demo.idmint.test}"
listen="${IDMINT_LISTEN:-127.0.0.1:8443}"
idmint="$PWD/.venv/bin/idmint"
if [[ ! -f "$data_dir/idmint.toml" ]]; then
    "$idmint" init --data-dir "$data_dir" --trust-domain "$trust_domain"
fi
token_file=./demo-token
cat <<EOT

idmint is starting on https://$listen for $trust_domain (data: $data_dir).
Get a first X509-SVID, then a JWT-SVID, from another terminal (a join token
is used once; the entry's owner defaults to you):

  $idmint entry create --data-dir $data_dir --spiffe-id spiffe://$trust_domain/demo \\
      --selector join_token:any:true --expires-at 30d
  (umask 077; $idmint token create --data-dir $data_dir \\
      --spiffe-id spiffe://$trust_domain/demo > $token_file)
  $idmint svid x509 --server https://$listen --bundle $data_dir/server/bundle.pem \\
      --join-token-file $token_file --out ./demo-svid
  openssl x509 -in ./demo-svid/svid.pem -noout -subject -ext subjectAltName
  (umask 077; $idmint token create --data-dir $data_dir \\
      --spiffe-id spiffe://$trust_domain/demo > $token_file)
  $idmint svid jwt --server https://$listen --bundle $data_dir/server/bundle.pem \\
      --join-token-file $token_file --audience demo

EOT
exec "$idmint" server --data-dir "$data_dir" --listen "$listen"
