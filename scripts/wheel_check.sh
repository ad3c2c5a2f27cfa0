#!/usr/bin/env bash
# Build the wheel and use it as a new user would: installed NON-editable into
# fresh virtualenvs outside the checkout.
#   1. only idmint/ (and its .dist-info) is top-level in the wheel;
#   2. with [server]: init -> server -> entry + token -> svid x509 (checked
#      with openssl) -> audit verify, the server stopped by its PID;
#   3. with [agent] too: `idmint agent` attests with a node join token and a
#      process of this uid gets its SVID from the Workload API socket
#      (`idmint svid x509 --socket`, checked with openssl), the agent stopped
#      by its PID;
#   4. the bare wheel with only cryptography: idmint.workload imports and
#      loads nothing of the server; with its own dependencies (click) the
#      server commands name the extra they need, and its `idmint svid x509`
#      gets an SVID from the server of step 2.
# Needs softhsm2 and openssl (scripts/bootstrap.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
python=${PYTHON:-python3}
if [[ -x .venv/bin/python ]]; then
    python=$checkout/.venv/bin/python
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/idmint-wheel.XXXXXX")
server_pid=""
agent_pid=""
stop_pid() {
    if [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop_pid "$agent_pid"
    stop_pid "$server_pid"
    rm -rf "$scratch"
}
trap cleanup EXIT
say() { echo "wheel_check: $*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}
pip_quiet=(-q --disable-pip-version-check)

say "building the wheel"
"$python" -m pip wheel "${pip_quiet[@]}" --no-deps -w "$scratch/whl" . >"$scratch/build.log" 2>&1 \
    || { cat "$scratch/build.log" >&2; fail "pip wheel"; }
wheel=$(ls "$scratch"/whl/idmint-*.whl)

say "top-level names in $(basename "$wheel"):"
top_level=$(unzip -Z1 "$wheel" | cut -d/ -f1 | sort -u)
echo "$top_level" | sed 's/^/    /' >&2
unexpected=$(echo "$top_level" | grep -v -x -e idmint -e 'idmint-[0-9.]*\.dist-info' || true)
[[ -z "$unexpected" ]] || fail "the wheel installs other top-level names: $unexpected"
# The listing is read whole: grep -q would stop early and, under pipefail,
# unzip's SIGPIPE would fail the check although the file is there.
listing=$(unzip -Z1 "$wheel")
grep -q '^idmint/ca/storage/migrations/versions/0001_.*\.py$' <<<"$listing" \
    || fail "the migrations are not in the wheel"
for file in workload_pb2.py workload_pb2_grpc.py workload.proto LICENSE; do
    grep -q "^idmint/agent/proto/$file\$" <<<"$listing" || fail "agent/proto/$file is not in the wheel"
done

# Run outside the checkout, with no idmint or SoftHSM settings inherited, so
# nothing but the installed wheel can be imported.
cd "$scratch"
clean_env=(env -u SOFTHSM2_CONF -u PYTHONPATH)
while IFS='=' read -r name _; do
    clean_env+=(-u "$name")
done < <(env | grep '^IDMINT_' || true)

say "server venv: the wheel with [server]"
"$python" -m venv "$scratch/server-venv"
server_bin="$scratch/server-venv/bin"
"$server_bin/pip" install "${pip_quiet[@]}" "${wheel}[server]" >"$scratch/install.log" 2>&1 \
    || { cat "$scratch/install.log" >&2; fail "pip install ${wheel}[server]"; }
location=$("$server_bin/python" -c 'import idmint; print(idmint.__file__)')
[[ "$location" == "$scratch/server-venv/"* ]] || fail "idmint imported from $location"
[[ "$location" != "$checkout/"* ]] || fail "idmint imported from the checkout"
idmint=("${clean_env[@]}" "$server_bin/idmint")

data="$scratch/data"
trust_domain=wheel.test
spiffe_id="spiffe://$trust_domain/wheel-check"
"${idmint[@]}" init --data-dir "$data" --trust-domain "$trust_domain" >/dev/null
port=$("$server_bin/python" -c '
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])')
"${idmint[@]}" server --data-dir "$data" --listen "127.0.0.1:$port" >"$scratch/server.log" 2>&1 &
server_pid=$!
bundle="$data/server/bundle.pem"
for _ in $(seq 1 300); do
    if [[ -f "$bundle" ]] && curl -sf --cacert "$bundle" "https://127.0.0.1:$port/readyz" >/dev/null; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$scratch/server.log" >&2; fail "idmint server exited"; }
    sleep 0.2
done
curl -sf --cacert "$bundle" "https://127.0.0.1:$port/readyz" >/dev/null \
    || { cat "$scratch/server.log" >&2; fail "idmint server not ready after 60 s"; }
say "server ready on 127.0.0.1:$port (PID $server_pid)"

"${idmint[@]}" entry create --data-dir "$data" --spiffe-id "$spiffe_id" \
    --selector join_token:any:true --owner wheel-check --expires-at 1d >/dev/null
token=$("${idmint[@]}" token create --data-dir "$data" --spiffe-id "$spiffe_id")
"${idmint[@]}" svid x509 --server "https://127.0.0.1:$port" --bundle "$bundle" \
    --join-token "$token" --out "$scratch/svid" >&2

# Judged by openssl, not by our code: the SAN, and the chain to the bundle.
openssl x509 -in "$scratch/svid/svid.pem" -noout -ext subjectAltName | grep -q "URI:$spiffe_id" \
    || fail "the SVID does not name $spiffe_id"
openssl x509 -in "$scratch/svid/svid.pem" -out "$scratch/leaf.pem"
openssl verify -CAfile "$scratch/svid/bundle.pem" -untrusted "$scratch/svid/svid.pem" \
    "$scratch/leaf.pem" >/dev/null || fail "openssl does not verify the SVID against the bundle"
say "openssl verifies the X509-SVID for $spiffe_id"

say "agent: the wheel with [agent]; a process of uid $(id -u) gets its SVID from the socket"
"$server_bin/pip" install "${pip_quiet[@]}" "${wheel}[agent]" >>"$scratch/install.log" 2>&1 \
    || { cat "$scratch/install.log" >&2; fail "pip install ${wheel}[agent]"; }
agent_token=$("${idmint[@]}" token create --data-dir "$data" --agent --output json)
agent_id=$("$server_bin/python" -c 'import json, sys; print(json.load(sys.stdin)["spiffe_id"])' \
    <<<"$agent_token")
(umask 077 && "$server_bin/python" -c 'import json, sys; print(json.load(sys.stdin)["token"])' \
    <<<"$agent_token" >"$scratch/agent-token")
workload_id="spiffe://$trust_domain/wheel-agent-workload"
"${idmint[@]}" entry create --data-dir "$data" --spiffe-id "$workload_id" --parent-id "$agent_id" \
    --selector "unix:uid:$(id -u)" --owner wheel-check --expires-at 1d >/dev/null
socket="$scratch/agent.sock"
"${idmint[@]}" agent --server "https://127.0.0.1:$port" --bundle "$bundle" \
    --join-token-file "$scratch/agent-token" --socket "$socket" >"$scratch/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 150); do
    [[ -S "$socket" ]] && break
    kill -0 "$agent_pid" 2>/dev/null || { cat "$scratch/agent.log" >&2; fail "idmint agent exited"; }
    sleep 0.2
done
[[ -S "$socket" ]] || { cat "$scratch/agent.log" >&2; fail "no agent socket after 30 s"; }
"${idmint[@]}" svid x509 --socket "$socket" --out "$scratch/agent-svid" >&2 \
    || { cat "$scratch/agent.log" >&2; fail "idmint svid x509 --socket"; }
openssl x509 -in "$scratch/agent-svid/svid.pem" -noout -ext subjectAltName \
    | grep -q "URI:$workload_id" || fail "the agent's SVID does not name $workload_id"
openssl x509 -in "$scratch/agent-svid/svid.pem" -out "$scratch/agent-leaf.pem"
openssl verify -CAfile "$scratch/agent-svid/bundle.pem" -untrusted "$scratch/agent-svid/svid.pem" \
    "$scratch/agent-leaf.pem" >/dev/null || fail "openssl does not verify the agent's SVID"
[[ $(stat -c %a "$scratch/agent-svid/svid.key") == 600 ]] || fail "svid.key is not 0600"
stop_pid "$agent_pid"
agent_pid=""
say "openssl verifies the X509-SVID for $workload_id from the agent's Workload API"

say "client venv: the bare wheel with only cryptography"
"$python" -m venv "$scratch/client-venv"
client_bin="$scratch/client-venv/bin"
"$client_bin/pip" install "${pip_quiet[@]}" cryptography >"$scratch/client.log" 2>&1 \
    && "$client_bin/pip" install "${pip_quiet[@]}" --no-deps "$wheel" >>"$scratch/client.log" 2>&1 \
    || { cat "$scratch/client.log" >&2; fail "pip install the bare wheel"; }
"${clean_env[@]}" "$client_bin/python" - <<'EOF' || fail "idmint.workload does not import with only cryptography"
import importlib.metadata
import sys

import idmint.client
import idmint.pop
import idmint.workload

installed = sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions())
allowed = {"cryptography", "cffi", "pycparser", "idmint", "pip", "setuptools"}
assert set(installed) <= allowed, f"more than cryptography is installed: {installed}"
server_side = sorted(
    m for m in sys.modules if m.startswith(("idmint.ca", "idmint.hsm", "idmint.attestation"))
)
assert not server_side, f"the light client imported {server_side}"
print(f"wheel_check: import idmint.workload works with only {installed}", file=sys.stderr)
EOF

"$client_bin/pip" install "${pip_quiet[@]}" "$wheel" >>"$scratch/client.log" 2>&1 \
    || { cat "$scratch/client.log" >&2; fail "pip install the wheel (light client)"; }
"$client_bin/pip" check >&2 || fail "pip check in the light client's venv"
client_idmint=("${clean_env[@]}" "$client_bin/idmint")
"${client_idmint[@]}" svid x509 --help >/dev/null || fail "idmint svid x509 --help"
for command in "server --help" "init --data-dir x --trust-domain t.test" "entry list"; do
    set +e
    # shellcheck disable=SC2086  # the words of $command are the arguments
    output=$("${client_idmint[@]}" $command 2>&1)
    status=$?
    set -e
    [[ $status -eq 1 ]] || fail "idmint $command exited $status without [server]: $output"
    [[ $(echo "$output" | wc -l) -eq 1 ]] || fail "idmint $command printed more than one line: $output"
    echo "$output" | grep -qF "pip install 'idmint[server]'" \
        || fail "idmint $command does not name the extra: $output"
done
say "without [server]: $output"

# The light client's own command against the same server: an SVID for a
# second token, with nothing of the server installed beside it.
token=$("${idmint[@]}" token create --data-dir "$data" --spiffe-id "$spiffe_id")
"${client_idmint[@]}" svid x509 --server "https://127.0.0.1:$port" --bundle "$bundle" \
    --join-token "$token" --out "$scratch/client-svid" >&2
openssl x509 -in "$scratch/client-svid/svid.pem" -noout -ext subjectAltName \
    | grep -q "URI:$spiffe_id" || fail "the light client's SVID does not name $spiffe_id"
set +e
output=$(env -u ACTIONS_ID_TOKEN_REQUEST_URL -u ACTIONS_ID_TOKEN_REQUEST_TOKEN \
    "${client_idmint[@]}" svid jwt --server "https://127.0.0.1:$port" --bundle "$bundle" \
    --ci github --audience a 2>&1)
status=$?
set -e
[[ $status -eq 1 ]] && echo "$output" | grep -q "id-token: write" \
    || fail "idmint svid jwt --ci github outside CI: $output"
say "the light client got an X509-SVID from the server; outside CI, --ci github says: $output"

"${idmint[@]}" audit verify --data-dir "$data" >&2

kill "$server_pid"
wait "$server_pid" || true
server_pid=""
say "server stopped"

say "all checks passed"
