#!/usr/bin/env bash
# Run step of the Telbase GitHub Action (action.yml): `telbase ci COMMAND …` in the
# working directory, its exit status written to the step output `exit-code` and returned.
# `telbase ci` itself writes has-changes, plan-json and summary to GITHUB_OUTPUT, the job
# summary, the annotations and the pull-request comment (docs/ci.md).
#
# Environment (set by action.yml from the inputs, already checked by setup.sh):
#   TELBASE_COMMAND, TELBASE_CONFIG, TELBASE_ENVIRONMENT (empty: chosen by the event),
#   TELBASE_COMMENT, TELBASE_FAIL_ON_DRIFT, GITHUB_TOKEN (may be empty),
#   TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER, TELBASE_GOOGLE_SERVICE_ACCOUNT (may be empty).
set -uo pipefail

# An input left empty means "not given": unset it so telbase sees no variable rather than
# an empty token or an empty provider name.
for name in GITHUB_TOKEN TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER TELBASE_GOOGLE_SERVICE_ACCOUNT; do
    [ -n "${!name:-}" ] || unset "$name"
done

# The comment input also takes the booleans the issue's first sketch used: true is `auto`
# (on pull requests), false is `never`.
comment=${TELBASE_COMMENT:-auto}
case "$comment" in
    true) comment=auto ;;
    false) comment=never ;;
esac
# `--config=…` in one word: a path starting with `-` stays a path.
args=(ci "${TELBASE_COMMAND:?TELBASE_COMMAND is not set}" "--config=${TELBASE_CONFIG:-telbase.yaml}"
    "--comment=$comment")
[ -n "${TELBASE_ENVIRONMENT:-}" ] && args+=(--environment "$TELBASE_ENVIRONMENT")
if [ "${TELBASE_FAIL_ON_DRIFT:-false}" = true ]; then
    if [ "$TELBASE_COMMAND" = drift ]; then
        args+=(--fail-on-drift)
    else
        printf '::warning title=telbase::fail-on-drift applies to the drift command only; this step runs %s\n' "$TELBASE_COMMAND"
    fi
fi

telbase "${args[@]}"
code=$?
printf 'exit-code=%s\n' "$code" >>"$GITHUB_OUTPUT"
exit "$code"
