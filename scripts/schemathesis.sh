#!/usr/bin/env bash
# Runs schemathesis against the COMMITTED docs/openapi.json and a real `telbase serve
# --control-plane` on a throwaway SQLite store, with every check (no 5xx, documented status
# codes, responses and content types as described). Any finding fails. `.ci/run` calls this;
# run it locally the same way: `bash scripts/schemathesis.sh` (`--install` only installs the
# pinned schemathesis, into a venv in the CI cache).
#
# The store is seeded through the real CLI: `telbase team create` for a team and its Owner,
# `telbase team token` for the Owner's API token, which schemathesis sends on every request.
# Every route in the description is exercised, so routes added later join the run by
# themselves.
#
# Environment (all optional):
#   SCHEMATHESIS      the schemathesis executable (default: a venv in the CI cache, installed
#                     from PyPI at the pinned version when missing)
#   TELBASE_BIN       the telbase binary (default: `cargo build --locked --bin telbase`)
#   ST_MAX_EXAMPLES   examples per operation (default 40); ST_SEED the seed (default 8)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
CI_CACHE="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/telbase-ci"
ST_VENV="$CI_CACHE/schemathesis-$SCHEMATHESIS_VERSION"
MAX_EXAMPLES="${ST_MAX_EXAMPLES:-40}"
SEED="${ST_SEED:-8}"

if [ -z "${SCHEMATHESIS:-}" ]; then
    SCHEMATHESIS="$ST_VENV/bin/schemathesis"
    if ! "$SCHEMATHESIS" --version >/dev/null 2>&1; then
        # A private venv per version (as check-jsonschema's in .ci/run): no PEP 668 trouble,
        # and a version bump installs beside the old one instead of over it.
        PYTHON=$(command -v python3.11 || command -v python3)
        rm -rf "$ST_VENV"
        mkdir -p "$CI_CACHE"
        "$PYTHON" -m venv "$ST_VENV"
        "$ST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$SCHEMATHESIS_VERSION"
    fi
fi
"$SCHEMATHESIS" --version
# `--install`: only make sure the pinned schemathesis is there (.ci/run's install step).
if [ "${1:-}" = "--install" ]; then
    exit 0
fi

if [ -z "${TELBASE_BIN:-}" ]; then
    cargo build --locked --quiet --bin telbase
    TELBASE_BIN="$(pwd)/target/debug/telbase"
fi

work=$(mktemp -d)
server_pid=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The server's settings: a fresh store, audit and control keys, and a GitHub App that is
# never called (the webhook side needs one to start; nothing here sends it a delivery).
export TELBASE_DATABASE_URL="sqlite:$work/store.db"
"$TELBASE_BIN" audit keygen --out "$work/audit.key" >/dev/null
export TELBASE_AUDIT_KEY_FILE="$work/audit.key"
(umask 077 && head -c 32 /dev/urandom | base64 >"$work/control.key")
export TELBASE_CONTROL_KEY_FILE="$work/control.key"
(umask 077 && openssl genrsa -out "$work/app.pem" 2048 2>/dev/null)
export GITHUB_APP_ID=1 GITHUB_APP_PRIVATE_KEY_FILE="$work/app.pem"
export GITHUB_WEBHOOK_SECRET=schemathesis-unused
export GITHUB_API_URL=http://127.0.0.1:9

"$TELBASE_BIN" team create acme --owner owner@example.com >/dev/null
token=$("$TELBASE_BIN" team token acme --user owner@example.com --name schemathesis)
# The team may register its own account's repositories (an operator's grant).
"$TELBASE_BIN" team repos add acme 'acme/*' >/dev/null
# A master key (a keyring file: `<id> <base64 of 32 bytes>`), so env vars can be sealed.
(umask 077 && echo "k1 $(head -c 32 /dev/urandom | base64)" >"$work/master.keys")
export TELBASE_MASTER_KEY_FILE="$work/master.keys"

# A free port: bind 0 is not available through the CLI, so ask the kernel for one first.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Abuse protection's numbers raised (docs/abuse.md): thousands of requests, many with bad
# credentials on purpose, must reach the handlers, not the lock. tests/control_harden.rs
# tests the locks and limits themselves.
export TELBASE_ABUSE_ADDRESS_FAILURES=1000000 TELBASE_ABUSE_TOKEN_RATE=1000000/1000000
export TELBASE_ABUSE_ADDRESS_RATE=1000000/1000000
"$TELBASE_BIN" serve --control-plane --listen "127.0.0.1:$port" --workers 1 \
    --uptime-seconds 0 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/api/v1/openapi.json" 2>/dev/null && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/server.log" >&2
        echo "error: telbase serve exited before answering" >&2
        exit 1
    fi
    sleep 0.2
done

# A project with a stored value, so the project routes (`path.project` in the toml) reach
# their handlers and not only the 404 of a missing project.
api() {
    curl -fsS -o /dev/null -X "$1" -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' -d "$3" "http://127.0.0.1:$port/api/v1/teams/acme/$2"
}
api POST projects '{"name": "web", "repo": "acme/web"}'
api PUT projects/web/environments/production/env-vars/DB_URL '{"value": "seeded"}'

# The served description must be the committed one (tests/control_openapi.rs checks the
# code against it too); schemathesis reads the committed file.
if ! curl -fsS "http://127.0.0.1:$port/api/v1/openapi.json" | cmp -s - docs/openapi.json; then
    echo "error: the server describes itself differently from docs/openapi.json; regenerate it (see tests/control_openapi.rs)" >&2
    exit 1
fi

# Operations that can take the run's own credentials away (revoking its token, demoting or
# removing its Owner once another Owner was invited) or its seeded project run last, in a
# second pass, so that the first pass tests every other operation with a working token and
# an existing project.
LAST_OPERATIONS=(revoke_token change_role remove_member delete_project)
exclude=() include=()
for op in "${LAST_OPERATIONS[@]}"; do
    exclude+=(--exclude-operation-id "$op")
    include+=(--include-operation-id "$op")
done
status=0
for pass in first last; do
    if [ "$pass" = first ]; then filter=("${exclude[@]}"); else filter=("${include[@]}"); fi
    echo "==== schemathesis: $pass pass"
    "$SCHEMATHESIS" --no-color --config-file scripts/schemathesis.toml run docs/openapi.json \
        --url "http://127.0.0.1:$port" \
        --checks all \
        --seed "$SEED" \
        --max-examples "$MAX_EXAMPLES" \
        --header "Authorization: Bearer $token" \
        --generation-database none \
        --report-dir "$work/report-$pass" \
        "${filter[@]}" || status=$?
done
if [ "$status" -ne 0 ]; then
    echo "---- server log (last 50 lines)" >&2
    tail -n 50 "$work/server.log" >&2
fi
exit "$status"
