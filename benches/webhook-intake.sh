#!/usr/bin/env bash
# Webhook intake, side by side: `telbase serve` against adnanh/webhook (Debian package
# `webhook`), both verifying GitHub's X-Hub-Signature-256 over the same signed push payload
# (GitHub's real one, from ../shared), under load from wrk on loopback.
#
# - telbase: checks the signature, parses the push, and records the delivery and its
#   reconcile job durably in the SQLite store (WAL) before answering 202. One worker runs
#   (the minimum; TELBASE_WORKERS=0 still starts one) and its GitHub reads fail at once
#   against a closed port, so what is measured is intake, not reconciling, with the worker's
#   claims competing for the store as they would. Every request has its own
#   X-GitHub-Delivery, so none is acknowledged as a duplicate.
# - webhook: checks the same signature (trigger rule payload-hmac-sha256) and runs
#   /bin/true, its no-op command.
#
# Rounds alternate which server goes first, so a busy machine slows both alike; we report
# the medians of requests per second and of the p99 latency, and their ratios.
# Needs wrk, webhook and openssl (Debian packages).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in wrk webhook openssl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 2; }
done
payload_src=../shared/provider-apis/github/webhooks/push.create-default-branch.with-installation.payload.json
[ -f "$payload_src" ] || { echo "needs $payload_src" >&2; exit 2; }

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}

cargo build --release --locked --quiet --bin telbase
telbase=$(pwd)/target/release/telbase
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

secret="intake-bench-secret"
# The real payload, pointed at the production branch (a push Telbase queues a job for).
python3 - "$payload_src" "$work/body.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
v["ref"] = "refs/heads/main"
v["after"] = "1" * 40
v["deleted"] = False
open(sys.argv[2], "w").write(json.dumps(v))
PY
sig="sha256=$(openssl dgst -sha256 -hmac "$secret" -r "$work/body.json" | cut -d' ' -f1)"
openssl genrsa -out "$work/app.pem" 2048 2>/dev/null

# wrk: the signed body on every request, each with its own delivery id.
cat >"$work/post.lua" <<LUA
-- Each wrk thread gets its own id prefix (setup runs once per thread, in the main state),
-- and each run its own (the rounds share one store).
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", os.time() .. "-" .. threads)
end
local body = io.open("$work/body.json"):read("*a")
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-GitHub-Delivery"] = tid .. "-" .. n,
    ["X-Hub-Signature-256"] = "$sig",
  }, body)
end
LUA

cat >"$work/hooks.json" <<JSON
[{
  "id": "github",
  "execute-command": "/bin/true",
  "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": "$secret",
                             "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}}
}]
JSON

port_t=18731
port_w=18732
TELBASE_DATABASE_URL="sqlite:$work/telbase.db" TELBASE_LISTEN="127.0.0.1:$port_t" \
    TELBASE_WORKERS=0 TELBASE_POLL_SECONDS=0 TELBASE_SWEEP_SECONDS=0 TELBASE_UPTIME_SECONDS=0 \
    GITHUB_APP_ID=1 GITHUB_APP_PRIVATE_KEY_FILE="$work/app.pem" GITHUB_WEBHOOK_SECRET="$secret" \
    GITHUB_API_URL="http://127.0.0.1:9" RUST_LOG=error \
    "$telbase" serve >"$work/telbase.log" 2>&1 &
pids+=($!)
webhook -hooks "$work/hooks.json" -ip 127.0.0.1 -port "$port_w" >"$work/webhook.log" 2>&1 &
pids+=($!)
for url in "http://127.0.0.1:$port_t/healthz" "http://127.0.0.1:$port_w/"; do
    for _ in $(seq 100); do curl -s -o /dev/null "$url" && break; sleep 0.1; done
done

# One signed request each first: both must accept it, or the numbers mean nothing.
check() {
    curl -s -o /dev/null -w '%{http_code}' -X POST "$1" -H 'Content-Type: application/json' \
        -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: check-$RANDOM" \
        -H "X-Hub-Signature-256: $sig" --data-binary @"$work/body.json"
}
t_code=$(check "http://127.0.0.1:$port_t/webhooks/github")
w_code=$(check "http://127.0.0.1:$port_w/hooks/github")
[ "$t_code" = 202 ] || { echo "telbase answered $t_code, not 202"; cat "$work/telbase.log"; exit 1; }
[ "$w_code" = 200 ] || { echo "webhook answered $w_code, not 200"; cat "$work/webhook.log"; exit 1; }

run() { # name url -> "rps p99_ms"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/post.lua" "$2" |
        python3 -c '
import re, sys
t = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", t)
p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if bad: sys.exit("non-2xx answers: " + bad.group(1) + "\n" + t)
n = int(re.search(r"(\d+) requests in", t).group(1))
print(rps, p99, n)'
}
: >"$work/results"
for i in $(seq "$ROUNDS"); do
    if [ $((i % 2)) -eq 1 ]; then order="t w"; else order="w t"; fi
    for who in $order; do
        if [ "$who" = t ]; then
            echo "telbase $(run telbase "http://127.0.0.1:$port_t/webhooks/github")" >>"$work/results"
        else
            echo "webhook $(run webhook "http://127.0.0.1:$port_w/hooks/github")" >>"$work/results"
        fi
    done
done
# Every accepted delivery is in the store (recorded durably before the 202).
deliveries=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from deliveries").fetchone()[0])' "$work/telbase.db")
python3 - "$work/results" "$ROUNDS" "$deliveries" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
# Every request telbase answered (plus the one check) is a distinct delivery in the store;
# requests wrk sent but cut off at the end of a run may be stored without being counted.
sent = sum(int(r[3]) for r in rows if r[0] == "telbase") + 1
if int(sys.argv[3]) < sent:
    sys.exit(f"only {sys.argv[3]} deliveries stored for {sent} answered requests")
def med(who, col):
    return statistics.median(float(r[col]) for r in rows if r[0] == who)
t_rps, w_rps = med("telbase", 1), med("webhook", 1)
t_p99, w_p99 = med("telbase", 2), med("webhook", 2)
print(f"webhook intake over {sys.argv[2]} interleaved rounds (medians):")
print(f"  telbase serve  {t_rps:9.0f} req/s   p99 {t_p99:7.2f} ms   (signature + durable enqueue; {sys.argv[3]} deliveries stored for {sent} answered)")
print(f"  webhook        {w_rps:9.0f} req/s   p99 {w_p99:7.2f} ms   (signature + /bin/true)")
print(f"  throughput ratio telbase/webhook {t_rps / w_rps:.2f}; p99 ratio telbase/webhook {t_p99 / w_p99:.2f}")
PY
