#!/usr/bin/env bash
# Install what idmint needs on a Debian-like machine, then a virtualenv in .venv.
#   scripts/bootstrap.sh          runtime: softhsm2, opensc, the package with [server]
#   scripts/bootstrap.sh --test   also PostgreSQL, redis-server (shared rate limits) and the test extras
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

packages=(softhsm2 opensc openssl)
((want_test)) && packages+=(postgresql redis-server nginx-light curl)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null; then
        echo "idmint: please install ${missing[*]} with your package manager" >&2
        exit 1
    fi
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    echo "idmint: installing ${missing[*]} (apt-get)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=""
for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python="$candidate"
        break
    fi
done
if [[ -z "$python" ]]; then
    echo "idmint: Python 3.11 or newer is required" >&2
    exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        # Debian's own python3 ships venv separately.
        rm -rf .venv
        if command -v apt-get >/dev/null; then
            sudo=""
            [[ $(id -u) -ne 0 ]] && sudo="sudo"
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
        fi
        "$python" -m venv .venv
    fi
fi
# The demo runs the server: [server]; the tests need it too ([test] includes it).
extras="server"
((want_test)) && extras="test,postgres,redis"
# What pip would install depends only on these files and the extras (the
# install is editable: source changes need no reinstall), so a stamp of them
# lets a warm venv skip pip, which takes seconds even when nothing changes.
# Delete the stamp to force a reinstall.
stamp=.venv/idmint-install.stamp
fingerprint=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
installed=""
if [[ -f "$stamp" ]]; then
    read -r stamped_fingerprint installed <"$stamp" || true
    [[ "${stamped_fingerprint:-}" == "$fingerprint" ]] || installed=""
fi
covered=1
for extra in ${extras//,/ }; do
    [[ " $installed " == *" $extra "* ]] || covered=0
done
if ((covered)) && [[ -x .venv/bin/idmint ]]; then
    exit 0
fi
log=.venv/install.log
if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip \
        && .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"; } \
        >"$log" 2>&1; then
    cat "$log" >&2
    echo "idmint: installing the Python package failed (log above, also in $log)" >&2
    exit 1
fi
# [test] and [postgres] pull in [server]: a later plain bootstrap needs nothing more.
now="$installed ${extras//,/ }"
((want_test)) && now+=" server"
echo "$fingerprint $(tr ' ' '\n' <<<"$now" | sed '/^$/d' | sort -u | tr '\n' ' ')" >"$stamp"
