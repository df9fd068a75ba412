#!/usr/bin/env bash
# Debian packages the test suite needs, installed only when missing (idempotent).
#
#   bash scripts/install-system-deps.sh      (or: make system-deps)
#
# As root it runs apt-get; otherwise it prints what to install and exits 0. It never starts a
# service: the tests start their own throw-away redis-server.
#
# To add a dependency, append "<binary>:<debian package>" to DEPS (e.g. "chromium:chromium").
set -euo pipefail

DEPS=(
    "redis-server:redis-server"
    "chromium:chromium"  # the playground's browser test (tests/e2e), driven by Playwright
)

missing=()
for dep in "${DEPS[@]}"; do
    binary=${dep%%:*}
    package=${dep#*:}
    if command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ]; then
        echo "system-deps: $binary found"
    else
        missing+=("$package")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: nothing to install"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: missing Debian packages: ${missing[*]}"
    echo "system-deps: install them as root:"
    echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
    echo "system-deps: (tests that need them are skipped locally, and fail when CI is set)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: apt-get not found; install these packages by hand: ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know a package yet (e.g. a fresh image).
for package in "${missing[@]}"; do
    if ! apt-cache show "$package" >/dev/null 2>&1; then
        apt-get update -q
        break
    fi
done
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "system-deps: installed ${missing[*]}"
