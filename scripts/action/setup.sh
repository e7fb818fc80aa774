#!/usr/bin/env bash
# First step of the Telbase GitHub Action (action.yml): check the inputs, pick the release
# target for this runner, resolve the version, and put the install directory on PATH.
#
# Inputs arrive as environment variables (action.yml never expands `${{ … }}` inside a
# script, so nothing a workflow passes can become shell code):
#   INPUT_COMMAND, INPUT_ENVIRONMENT, INPUT_COMMENT, INPUT_FAIL_ON_DRIFT, INPUT_VERSION,
#   INPUT_WORKING_DIRECTORY, ACTION_REPOSITORY, ACTION_REF, RUNNER_OS, RUNNER_ARCH,
#   GITHUB_TOKEN (only to ask for the latest release), TELBASE_RELEASES_URL (optional).
# Writes the step outputs `version`, `target`, `dir`, `repository`.
set -euo pipefail

fail() {
    # One line, as a workflow error annotation: it shows on the run's summary page.
    printf '::error title=telbase::%s\n' "$1"
    exit 1
}

# one_of NAME VALUE ALLOWED...: fail unless VALUE is one of ALLOWED ("" allows empty).
one_of() {
    local name=$1 value=$2
    shift 2
    local v list="" empty=""
    for v in "$@"; do
        [ "$value" = "$v" ] && return 0
        if [ -z "$v" ]; then
            empty=" (or empty)"
        else
            list="${list:+$list, }$v"
        fi
    done
    fail "unknown $name \"$value\": valid values are $list$empty"
}

# --- the inputs ----------------------------------------------------------------------
command=${INPUT_COMMAND:-}
case "$command" in
    validate | plan | apply | drift) ;;
    "") fail "the command input is required: one of validate, plan, apply, drift" ;;
    *) fail "unknown command \"$command\": valid commands are validate, plan, apply, drift" ;;
esac
one_of environment "${INPUT_ENVIRONMENT:-}" "" production preview
one_of comment "${INPUT_COMMENT:-auto}" auto always never true false
one_of fail-on-drift "${INPUT_FAIL_ON_DRIFT:-false}" true false
workdir=${INPUT_WORKING_DIRECTORY:-.}
[ -d "$workdir" ] || fail "working-directory \"$workdir\" is not a directory (relative to the workspace)"

# --- which repository and release ----------------------------------------------------
# GitHub does not promise github.action_repository / github.action_ref inside composite
# actions (actions/runner#2525: they can be empty). The action's own checkout is at
# …/_actions/OWNER/REPO/REF, so read them from GITHUB_ACTION_PATH when they are missing.
repository=${ACTION_REPOSITORY:-}
ref=${ACTION_REF:-}
action_path=${GITHUB_ACTION_PATH:-}
action_path=${action_path//\\//} # Windows runners give backslashes
if [ -z "$repository" ] && [[ "$action_path" =~ /_actions/([^/]+)/([^/]+)/([^/]+)/?$ ]]; then
    repository="${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
    ref=${ref:-${BASH_REMATCH[3]}}
elif [ -z "$repository" ] && [ -n "${GITHUB_WORKSPACE:-}" ] && [ "$action_path" -ef "$GITHUB_WORKSPACE" ]; then
    # `uses: ./`: the action is the repository being built.
    repository=${GITHUB_REPOSITORY:-}
fi

semver='^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$'
version=${INPUT_VERSION:-}
if [ -n "$version" ]; then
    [[ "$version" == v* ]] || version="v$version"
    [[ "$version" =~ $semver ]] || fail "version \"${INPUT_VERSION}\" is not a release tag like v1.2.3"
elif [[ "$ref" =~ $semver ]]; then
    # `uses: …@v1.2.3`: the binary of the very same release as the action's scripts.
    version=$ref
elif [[ "$ref" =~ ^v[0-9]+(\.[0-9]+)?$ ]]; then
    # `uses: …@v1` or `@v1.2`, a moving major or minor tag: the newest stable release it
    # covers, never a release of the next major (which `latest` could be).
    [ -n "$repository" ] || fail "cannot tell which repository this action came from to find its releases: set the version input"
    api=${GITHUB_API_URL:-https://api.github.com}
    body=$(
        if [ -n "${GITHUB_TOKEN:-}" ]; then
            printf 'header = "Authorization: Bearer %s"\n' "$GITHUB_TOKEN"
        fi |
            curl -fsS --retry 3 --connect-timeout 10 -K - -H 'Accept: application/vnd.github+json' \
                "$api/repos/$repository/releases?per_page=100"
    ) || fail "could not list the releases of $repository from $api: set the version input"
    # Stable tags only (no -rc suffix), sorted numerically field by field (BSD and GNU
    # sort both do this; `sort -V` is GNU's).
    version=$(printf '%s' "$body" | grep -o '"tag_name"[[:space:]]*:[[:space:]]*"[^"]*"' |
        sed 's/.*"\([^"]*\)"$/\1/' | grep -E "^${ref//./\\.}\.[0-9]+(\.[0-9]+)?$" |
        grep -E '^v[0-9]+\.[0-9]+\.[0-9]+$' | sed 's/^v//' |
        sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1) || true
    [ -n "$version" ] || fail "no stable release of $repository matches $ref: set the version input"
    version="v$version"
else
    [ -n "$repository" ] || fail "cannot tell which repository this action came from to find its latest release: set the version input"
    api=${GITHUB_API_URL:-https://api.github.com}
    # The token goes to curl on standard input (-K -), not in its arguments, which any
    # process on the runner could read.
    body=$(
        if [ -n "${GITHUB_TOKEN:-}" ]; then
            printf 'header = "Authorization: Bearer %s"\n' "$GITHUB_TOKEN"
        fi |
            curl -fsS --retry 3 --connect-timeout 10 -K - -H 'Accept: application/vnd.github+json' \
                "$api/repos/$repository/releases/latest"
    ) || fail "could not read the latest release of $repository from $api: set the version input"
    version=$(printf '%s' "$body" | sed -n 's/.*"tag_name"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' | head -n 1)
    [[ "$version" =~ $semver ]] || fail "the latest release of $repository has no tag like v1.2.3 (got \"$version\"): set the version input"
fi

# --- the target for this runner ------------------------------------------------------
case "${RUNNER_OS:-}/${RUNNER_ARCH:-}" in
    Linux/X64) target=x86_64-unknown-linux-gnu ;;
    Linux/ARM64) target=aarch64-unknown-linux-gnu ;;
    macOS/X64) target=x86_64-apple-darwin ;;
    macOS/ARM64) target=aarch64-apple-darwin ;;
    Windows/X64) target=x86_64-pc-windows-msvc ;;
    # No release asset: install.sh builds from source (cargo install) for these.
    *) target="unsupported-${RUNNER_OS:-unknown}-${RUNNER_ARCH:-unknown}" ;;
esac

# One directory per version and target, so the cache key and the path agree. The tool
# cache survives between jobs on self-hosted runners; RUNNER_TEMP is the fallback.
base=${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:?RUNNER_TEMP is not set: is this running in GitHub Actions?}}
dir="$base/telbase/$version/$target"
mkdir -p "$dir/bin"
printf '%s\n' "$dir/bin" >>"$GITHUB_PATH"

{
    printf 'version=%s\n' "$version"
    printf 'target=%s\n' "$target"
    printf 'dir=%s\n' "$dir"
    printf 'repository=%s\n' "$repository"
} >>"$GITHUB_OUTPUT"
echo "telbase $version for $target in $dir"
