#!/usr/bin/env bash
# A shoal cluster on this machine in one command: 3 managers + 2 workers, each host a network
# namespace with its own address (10.232.0.1-5) and hostname (host1-5), containers through
# containerd + runc, a local registry with a test image, and a demo service.
#   deploy/demo.sh up       install what is missing, build, start, deploy the demo service
#   deploy/demo.sh status   nodes, services and tasks
#   deploy/demo.sh down     stop everything and remove every trace
# Needs root on Debian (it installs the packages in deploy/packages.txt) and a Rust toolchain.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/release}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-hosts}
export SHOAL_HOSTS_SET=0
HOST="unix://$SHOAL_HOSTS_DIR/h1/shoal.sock"
shoal() { "$SHOAL_BIN_DIR/shoal" --host "$HOST" "$@"; }

need_root() { [ "$(id -u)" = 0 ] || { echo "deploy/demo.sh needs root (network namespaces, containers)" >&2; exit 1; }; }

build() {
  command -v cargo >/dev/null || { echo "cargo is missing: install Rust (https://rustup.rs) and run again" >&2; exit 1; }
  if [ "$SHOAL_BIN_DIR" = "$ROOT/target/release" ]; then
    # Cargo rebuilds only what changed; a first build takes several minutes.
    echo "building the release binaries (cargo build --release --bins) ..."
    (cd "$ROOT" && cargo build --release --bins --quiet)
  fi
  for b in shoal shoald; do
    [ -x "$SHOAL_BIN_DIR/$b" ] || { echo "$SHOAL_BIN_DIR/$b is missing" >&2; exit 1; }
  done
}

up() {
  need_root
  "$ROOT/deploy/install-packages.sh"
  build
  if [ -e "$SHOAL_HOSTS_DIR/h1/pid" ]; then
    echo "a demo cluster is already up; \`deploy/demo.sh down\` first" >&2
    exit 1
  fi
  echo "starting 3 managers and 2 workers ..."
  "$ROOT/deploy/hosts.sh" up 3 2 >/dev/null
  local reg
  reg=$("$ROOT/deploy/hosts.sh" registry)
  echo "deploying the demo service ..."
  shoal service create --name demo --replicas 4 "$reg/busybox:1" \
    sh -c 'while true; do echo "hello from $(hostname) at $(date +%T)"; sleep 5; done' >/dev/null
  echo
  shoal node ls
  echo
  shoal service ps demo
  cat <<MSG

The cluster is up. Try:

  export SHOAL_HOST=$HOST PATH=$SHOAL_BIN_DIR:\$PATH
  shoal node ls
  shoal service ps demo
  shoal service logs demo
  shoal service scale demo=8
  shoal service create --name web --replicas 3 $reg/busybox:1 sleep 3600
  deploy/hosts.sh exec 4 ip addr          # a command inside host4's network namespace

Remote CLI over mTLS: shoal cluster admin-cert --name me --out /tmp/me; then
  shoal --host 10.232.0.2:4242 --tls-dir /tmp/me node ls

deploy/demo.sh status shows the state; deploy/demo.sh down removes everything.
MSG
}

status() {
  if [ ! -e "$SHOAL_HOSTS_DIR/h1/pid" ]; then
    echo "no demo cluster is up (deploy/demo.sh up starts one)"
    return 0
  fi
  shoal node ls
  echo
  shoal service ls
  echo
  for s in $(shoal service ls -q 2>/dev/null); do shoal service ps "$s"; echo; done
}

# Whatever of the demo's own is still here: processes, namespaces, bridge, mounts.
leftovers() {
  pgrep -af "$SHOAL_HOSTS_DIR" || true
  ip netns list 2>/dev/null | awk '$1 ~ /^shoal-h[0-9]+$/ {print "namespace " $1}'
  ip link show shoalbr0 >/dev/null 2>&1 && echo "bridge shoalbr0"
  grep " $SHOAL_HOSTS_DIR" /proc/mounts | awk '{print "mount " $2}'
  [ -e "$SHOAL_HOSTS_DIR" ] && echo "directory $SHOAL_HOSTS_DIR"
  return 0
}

down() {
  need_root
  "$ROOT/deploy/hosts.sh" down
  local left
  left=$(leftovers)
  if [ -n "$left" ]; then
    echo "left behind:" >&2
    echo "$left" >&2
    exit 1
  fi
  echo "the demo cluster is gone"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
