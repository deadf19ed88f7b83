#!/usr/bin/env bash
# Installs matrix-js-sdk (pinned, with its lock file) for tests/it/jssdk_interop.rs.
# Needs Node.js 20 or newer with npm. Usage: setup_jssdk.sh DIR
set -euo pipefail
dir="${1:?usage: setup_jssdk.sh DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
cp "$here/jssdk/package.json" "$here/jssdk/package-lock.json" "$dir.tmp/"
(cd "$dir.tmp" && npm ci --no-audit --no-fund --loglevel=error)
test -f "$dir.tmp/node_modules/matrix-js-sdk/lib/index.js"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
