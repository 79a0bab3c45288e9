#!/usr/bin/env bash
# The Node suite: installs the dev dependencies from package-lock.json, builds the addon
# from source (`npm install` runs scripts/build.mjs: cargo's dev profile in the
# workspace's target directory, the one `cargo test` uses, so no dependency is compiled
# twice) and runs `node --test`: the API and its errors, the shared vectors, the
# middleware in real node:http and Express servers, and index.d.ts against the build.
#
#   bindings-node/test.sh [NODE --test ARGS...]
set -euo pipefail
cd "$(dirname "$0")"
for tool in node npm cargo; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bindings-node/test.sh: $tool is missing" >&2; exit 1; }
done

# `npm ci` installs exactly the lockfile (and never rewrites it), then runs the package's
# install script, which builds the addon.
npm ci --no-audit --no-fund --loglevel=error

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
npm test --silent -- "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if ! grep -Eq '^# tests [1-9]' "$log"; then
  # node --test's "no tests ran": not a failure of the code, but never silent.
  echo
  echo "WARNING: node --test ran no tests: the Node suite ran NOTHING." >&2
fi
exit "$rc"
