#!/usr/bin/env bash
# Install step of the Telbase GitHub Action (action.yml), run on every run: take the release
# archive for this runner from the cache ($TELBASE_DIR/archive) or download it, verify it
# against the release's SHA256SUMS (downloaded fresh each time, so a poisoned cache entry is
# caught), and extract the binary into $TELBASE_DIR/bin (never cached: it always comes from
# the archive just verified).
#
# Environment (set by action.yml from the setup step's outputs):
#   TELBASE_VERSION     release tag, e.g. v1.2.3
#   TELBASE_TARGET      Rust target triple (or unsupported-OS-ARCH: no asset exists)
#   TELBASE_DIR         install root; the binary goes to $TELBASE_DIR/bin
#   TELBASE_REPOSITORY  owner/name of the action's repository
#   TELBASE_RELEASES_URL  optional: base URL holding VERSION/ASSET (a mirror, GHES, tests);
#                       default $GITHUB_SERVER_URL/$TELBASE_REPOSITORY/releases/download
#
# A checksum that does not match, or a SHA256SUMS that cannot be read, fails the step:
# nothing is installed and there is no fallback. Only an asset that does not exist (HTTP
# 404, or a runner no release is built for) falls back to building the same tag from source
# with `cargo install --locked`.
set -euo pipefail

fail() {
    printf '::error title=telbase install::%s\n' "$1"
    exit 1
}

version=${TELBASE_VERSION:?TELBASE_VERSION is not set}
target=${TELBASE_TARGET:?TELBASE_TARGET is not set}
dir=${TELBASE_DIR:?TELBASE_DIR is not set}
repository=${TELBASE_REPOSITORY:-}
server=${GITHUB_SERVER_URL:-https://github.com}

if [ -n "${TELBASE_RELEASES_URL:-}" ]; then
    base=${TELBASE_RELEASES_URL%/}
    # The checksum file comes from the same place as the asset, so it only protects
    # against corruption when that place is trusted: plain http only to this machine.
    case "$base" in
        https://*) ;;
        http://127.0.0.1[:/]* | http://localhost[:/]* | "http://[::1]"[:/]*) ;;
        *) fail "TELBASE_RELEASES_URL must be an https URL (plain http only on loopback): $base" ;;
    esac
else
    [ -n "$repository" ] || fail "cannot tell which repository to download releases from: set TELBASE_RELEASES_URL"
    base="$server/$repository/releases/download"
fi

exe=telbase
ext=tar.gz
if [[ "$target" == *-windows-* ]]; then
    exe=telbase.exe
    ext=zip
fi
stem="telbase-$version-$target"
asset="$stem.$ext"
work=$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/telbase-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Redirects (GitHub sends release downloads to its object store) may not step down from
# https to http.
protocols=(--proto '=https' --proto-redir '=https')
[[ "$base" == http://* ]] && protocols=(--proto '=http' --proto-redir '=http')

# GET url into file; prints the HTTP status (000 when the server could not be reached).
# Retries transient failures; a 404 is an answer, not a failure. A transfer cut short is
# reported as such rather than later as a confusing checksum mismatch.
fetch() {
    local status rc=0
    status=$(curl -sS -L "${protocols[@]}" --retry 3 --retry-delay 2 --connect-timeout 15 \
        -o "$2" -w '%{http_code}' "$1") || rc=$?
    if [ "$rc" -ne 0 ] && [ "${status:-000}" = 200 ]; then
        status="200 but cut short: curl exit $rc"
    fi
    printf '%s' "${status:-000}"
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1 # macOS
    else
        fail "neither sha256sum nor shasum is installed: cannot verify the download"
    fi
}

build_from_source() {
    echo "$1; building telbase $version from source with cargo install --locked"
    [ -n "$repository" ] || fail "$1, and the action's repository is unknown, so it cannot be built from source"
    command -v cargo >/dev/null 2>&1 ||
        fail "$1, and cargo is not installed to build it from source: install a Rust toolchain first (e.g. with rustup) or use a supported runner"
    cargo install --locked --git "$server/$repository" --tag "$version" --root "$dir" telbase ||
        fail "cargo install of telbase $version from $server/$repository failed"
}

# expected_sum: the archive's line in a freshly downloaded SHA256SUMS.
expected_sum() {
    local status
    status=$(fetch "$base/$version/SHA256SUMS" "$work/SHA256SUMS")
    [ "$status" = 200 ] ||
        fail "downloading $base/$version/SHA256SUMS failed (HTTP $status): refusing to install an unverified binary"
    # Lines are "<hex>  <name>" (sha256sum's format; "*<name>" in binary mode).
    expected=$(awk -v name="$asset" '$2 == name || $2 == "*" name { print $1; exit }' "$work/SHA256SUMS")
    [ -n "$expected" ] || fail "SHA256SUMS of $version has no line for $asset: refusing to install an unverified binary"
}

archive="$dir/archive/$asset"
downloaded=false
if [[ "$target" == unsupported-* ]]; then
    build_from_source "no release asset is built for this runner (${target#unsupported-})"
elif [ -f "$archive" ]; then
    # From the cache: trusted only once it matches the release's checksum.
    expected_sum
    actual=$(sha256_of "$archive")
    if [ "$actual" = "$expected" ]; then
        echo "verified the cached $asset (sha256 $actual)"
        cp "$archive" "$work/$asset"
        downloaded=true
    else
        printf '::warning title=telbase install::the cached %s does not match SHA256SUMS of %s (sha256 %s); discarding it and downloading again\n' "$asset" "$version" "$actual"
        rm -f "$archive"
    fi
fi

if [ "$downloaded" = false ] && [[ "$target" != unsupported-* ]]; then
    status=$(fetch "$base/$version/$asset" "$work/$asset")
    case "$status" in
        200) downloaded=true ;;
        404) build_from_source "no release asset $asset in $version" ;;
        *) fail "downloading $base/$version/$asset failed (HTTP $status)" ;;
    esac
    if [ "$downloaded" = true ]; then
        expected_sum
        actual=$(sha256_of "$work/$asset")
        if [ "$actual" != "$expected" ]; then
            fail "checksum mismatch for $asset: SHA256SUMS says $expected, the download is $actual; refusing to install it"
        fi
        echo "verified $asset (sha256 $actual)"
        # Kept for the cache (action.yml caches only this directory).
        mkdir -p "$dir/archive"
        cp "$work/$asset" "$archive.partial"
        mv -f "$archive.partial" "$archive"
    fi
fi

if [ "$downloaded" = true ]; then
    mkdir -p "$work/x"
    if [ "$ext" = zip ]; then
        if command -v unzip >/dev/null 2>&1; then
            unzip -q "$work/$asset" -d "$work/x"
        else
            7z x -bd -y "-o$work/x" "$work/$asset" >/dev/null
        fi
    else
        tar -xzf "$work/$asset" -C "$work/x"
    fi
    [ -f "$work/x/$stem/$exe" ] || fail "$asset does not contain $stem/$exe"
    mkdir -p "$dir/bin"
    # Move into place last, so an interrupted install leaves no half-written binary.
    cp "$work/x/$stem/$exe" "$dir/bin/.$exe.partial"
    chmod 0755 "$dir/bin/.$exe.partial"
    mv -f "$dir/bin/.$exe.partial" "$dir/bin/$exe"
fi

"$dir/bin/$exe" --version
