#!/usr/bin/env bash
# Usage: run.sh SERVER_URL BUNDLE JOIN_TOKEN_FILE DIR PORT
# nginx on an X509-SVID that `idmint svid x509 --watch` keeps current: the
# helper writes DIR/svid/{svid.pem,svid.key,bundle.pem} and reloads nginx
# after each renewal. Runs until Ctrl-C or SIGTERM; stops nginx then.
set -euo pipefail
server=$1 bundle=$2 token_file=$3 dir=$4 port=$5
here="$(cd "$(dirname "$0")" && pwd)"
idmint="${IDMINT:-idmint}"
mkdir -p "$dir/tmp" "$dir/svid"
sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" "$here/nginx.conf" >"$dir/nginx.conf"
nginx="nginx -p $dir -c $dir/nginx.conf -e $dir/error.log"

# The helper gets the first SVID, then renews it and reloads nginx each time.
IDMINT_JOIN_TOKEN="$(cat "$token_file")" "$idmint" svid x509 --server "$server" \
    --bundle "$bundle" --out "$dir/svid" --watch --renew-at "${RENEW_AT:-0.5}" \
    --exec "$nginx -s reload" &
helper=$!
stop() {
    kill "$helper" 2>/dev/null || true
    $nginx -s quit 2>/dev/null || true
}
trap stop EXIT
trap 'exit 0' INT TERM
for _ in $(seq 300); do
    [[ -s "$dir/svid/svid.pem" ]] && break
    kill -0 "$helper" 2>/dev/null || { echo "the SVID helper stopped" >&2; exit 1; }
    sleep 0.1
done
$nginx
echo "nginx on https://localhost:$port (client certificate required)" >&2
wait "$helper"
