#!/usr/bin/env bash
# The test command. On a fresh Debian machine, as root, it installs what the tests need (the
# packages in deploy/packages.txt, and cargo-nextest), builds the binaries and runs every test:
# unit and property tests, the openraft storage suite, in-process clusters, multi-process tests
# that drive real shoald binaries through the shoal CLI, the containerd runtime against a private
# containerd and registry, and the end-to-end test over network-namespace hosts.
# Then every fault scenario of chaos/run.sh once, in its short form.
# Arguments are passed to `cargo nextest run` (e.g. a test name filter); with arguments, only
# those tests run (no fault scenarios).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "tests/run.sh needs root: the end-to-end tests make network namespaces and run containers" >&2; exit 1; }
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
deploy/install-packages.sh --with-nextest
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
if [ $# = 0 ]; then
  chaos/run.sh
fi
