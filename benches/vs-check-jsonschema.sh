#!/usr/bin/env bash
# Side by side: `telbase validate` (schema + semantic checks) against `check-jsonschema`
# (schema only) on the largest example, both as whole commands the way a user or CI runs them.
# Reports hyperfine's medians and their ratio. Needs hyperfine (Debian package) and
# check-jsonschema (PyPI; .ci/run installs it into its cache venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

example=examples/monorepo/telbase.yaml
cargo build --release --locked --quiet
telbase=target/release/telbase
cj=${CHECK_JSONSCHEMA:-$(command -v check-jsonschema || echo "${XDG_CACHE_HOME:-$HOME/.cache}/telbase-ci/venv/bin/check-jsonschema")}
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 2; }
[ -x "$cj" ] || { echo "needs check-jsonschema (pip install check-jsonschema)" >&2; exit 2; }

out=$(mktemp)
hyperfine -N --warmup 3 --runs "${RUNS:-30}" --export-json "$out" \
  -n telbase "$telbase validate $example" \
  -n check-jsonschema "$cj --schemafile schemas/telbase.schema.json $example"
python3 - "$out" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
t, c = r["telbase"]["median"], r["check-jsonschema"]["median"]
print(f"median: telbase {t*1000:.1f} ms, check-jsonschema {c*1000:.1f} ms; check-jsonschema takes {c/t:.1f}x as long")
PY
rm -f "$out"
