#!/usr/bin/env bash
# Every check CI runs, in the order a developer wants to see failures: format, lints, docs,
# the Rust test suites (core, CLI, benches in Criterion's one-iteration test mode), then the
# command-line smoke tests. Bindings (C, Python, Node) add their suites here as they land.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "cargo test (workspace, incl. doctests)"
cargo test --workspace

step "core feature matrix (type-check each combination; core/test runs them in full)"
core/test --check

step "benches in Criterion test mode (one iteration each)"
cargo test -p edgeward-benches --benches

step "nginx module: edgeward in a real nginx (C ABI end to end)"
bash integrations/nginx/test.sh

step "Python package: built into a virtualenv (dev profile), pytest (API, vectors, stubtest, ASGI in uvicorn)"
bash bindings-python/test.sh

step "Node package: built from source (dev profile), node --test (API, vectors, middleware in node:http and Express, index.d.ts)"
bash bindings-node/test.sh

step "CLI smoke tests"
cargo run --quiet -p edgeward-cli -- check rulesets/policies/default.yaml
cargo run --quiet -p edgeward-cli -- test
cargo run --quiet -p edgeward-cli -- demo
cargo run --quiet -p edgeward-cli -- compile -o target/default.bundle
cargo run --quiet -p edgeward-cli -- inspect --policy target/default.bundle rulesets/samples/chat-injection.http

echo
echo "all checks passed"
