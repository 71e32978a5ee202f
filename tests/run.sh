#!/usr/bin/env bash
# The test command: unit and property tests, the openraft storage suite, in-process clusters,
# and the multi-process tests that drive real shoald binaries through the shoal CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc is missing: apt-get install protobuf-compiler" >&2; exit 1; }
command -v cargo-nextest >/dev/null || { echo "cargo-nextest is missing: cargo install cargo-nextest --locked" >&2; exit 1; }
for tool in containerd runc docker-registry umoci skopeo busybox htpasswd pgrep; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: see .ci/run for the packages the tests need" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "the end-to-end tests run containers and need root" >&2; exit 1; }
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
