#!/usr/bin/env bash
# Installs the Debian packages in deploy/packages.txt that are not installed yet, and
# cargo-nextest when `cargo` is asked for (`--with-nextest`). Prints what it installs; does
# nothing when everything is there. Needs root (or nothing to install).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
missing=()
while read -r pkg _; do
  case "$pkg" in ''|'#'*) continue ;; esac
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$pkg")
done <"$here/packages.txt"
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "missing packages: ${missing[*]} (run as root to install them)" >&2; exit 1; }
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "${1:-}" = --with-nextest ] && ! command -v cargo-nextest >/dev/null; then
  echo "installing: cargo-nextest"
  cargo install cargo-nextest --locked
fi
