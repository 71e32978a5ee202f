#!/usr/bin/env bash
# A local multi-host shoal cluster: each host is a network namespace with its own address on a
# test bridge, its own shoald, and its own namespace in one shared containerd; a local registry
# on the bridge serves images built from busybox-static.
#   deploy/hosts.sh up [MANAGERS [WORKERS]]   create hosts, start everything, init and join
#   deploy/hosts.sh down                      stop everything, remove hosts and state
#   deploy/hosts.sh host I                    print the --host value for host I
#   deploy/hosts.sh registry                  print the registry's HOST:PORT
#   deploy/hosts.sh exec I CMD...             run CMD inside host I's network namespace
#   deploy/hosts.sh start I [ARG...]          start host I's shoald again (after a kill), with
#                                             extra shoald arguments (--force-new-cluster)
#   deploy/hosts.sh registry-start            start the registry again (after a kill)
#   deploy/hosts.sh wait-ready N              wait (bounded) until N nodes are ready
# Host I is network namespace shoal-hI at 10.232.0.I with hostname hostI (its own UTS
# namespace); the bridge (and registry) is 10.232.0.254. `up` returns once every node is ready.
# SHOAL_HOSTS_SET=K (1..200) makes a separate set beside it: shoalK-hI at 10.232.K.I on bridge
# shoalbrK, so several clusters can run at once (give each its own SHOAL_HOSTS_DIR too).
# Needs root, iproute2, containerd, runc, docker-registry, umoci, skopeo, busybox-static.
set -euo pipefail
W=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-hosts}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SHOAL_BIN_DIR:-$ROOT/target/debug}
SET=${SHOAL_HOSTS_SET:-0}
case "$SET" in ''|*[!0-9]*) echo "SHOAL_HOSTS_SET must be a number 0..200" >&2; exit 2;; esac
[ "$SET" -le 200 ] || { echo "SHOAL_HOSTS_SET must be a number 0..200" >&2; exit 2; }
NET=10.232.$SET
BR=shoalbr$SET
if [ "$SET" = 0 ]; then NS=shoal-h; VETH=shv; else NS=shoal$SET-h; VETH=shv$SET-; fi
REG=$NET.254:5000
host() { echo "unix://$W/h$1/shoal.sock"; }
shoal() { local i=$1; shift; "$BIN/shoal" --host "$(host "$i")" "$@"; }
in_host() { local i=$1; shift; nsenter --net=/var/run/netns/$NS"$i" "$@"; }
wait_sock() { for _ in $(seq 1 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "timed out waiting for $1" >&2; return 1; }

# Starts host I's shoald in the host's network namespace and a UTS namespace of its own, so the
# node's hostname (what `node ls` and `service ps` show) is hostI. nsenter, unshare and the
# shell all exec in place, so $! is shoald's pid.
start_host() {
  local i=$1
  shift
  nsenter --net=/var/run/netns/$NS"$i" unshare --uts sh -c 'echo "$0" >/proc/sys/kernel/hostname && exec "$@"' \
    host"$i" "$BIN/shoald" --data-dir "$W/h$i/data" --listen-addr $NET."$i":4242 \
    --control-socket "$W/h$i/shoal.sock" \
    --containerd-socket "$W/containerd/containerd.sock" --containerd-namespace $NS"$i" \
    --insecure-registry "$REG" "$@" >>"$W/h$i/shoald.log" 2>&1 &
  echo $! >"$W/h$i/pid"
}

start_registry() {
  docker-registry serve "$W/registry.yml" >>"$W/registry.log" 2>&1 &
  echo $! >"$W/registry.pid"
}

# Waits until N nodes are ready (at most 60 s); on timeout prints `node ls` and fails.
wait_ready() {
  local n=$1 ready
  for _ in $(seq 1 300); do
    ready=$(shoal 1 node ls --format json 2>/dev/null | grep -c '"status": "ready"' || true)
    [ "$ready" -ge "$n" ] && return 0
    sleep 0.2
  done
  echo "timed out after 60 s waiting for $n ready nodes:" >&2
  shoal 1 node ls >&2 || true
  return 1
}

up() {
  local m=${1:-3} w=${2:-0} n i
  n=$((m + w))
  [ -x "$BIN/shoald" ] || { echo "build first: cargo build --bins (or set SHOAL_BIN_DIR)" >&2; exit 1; }
  mkdir -p "$W"
  ip link add $BR type bridge 2>/dev/null || true
  ip addr add $NET.254/24 dev $BR 2>/dev/null || true
  ip link set $BR up
  # containerd shared by all hosts (each shoald uses its own containerd namespace).
  cat >"$W/containerd.toml" <<TOML
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$W/containerd/containerd.sock"
TOML
  containerd --config "$W/containerd.toml" >"$W/containerd.log" 2>&1 &
  echo $! >"$W/containerd.pid"
  wait_sock "$W/containerd/containerd.sock"
  # The registry listens on the bridge, reachable from every host.
  mkdir -p "$W/registry"
  cat >"$W/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: $REG
YML
  start_registry
  "$ROOT/tests/images/build.sh" "$W/images" "$REG" >/dev/null
  for i in $(seq 1 "$n"); do
    ip netns del $NS"$i" 2>/dev/null || true
    ip link del $VETH"$i" 2>/dev/null || true
    ip netns add $NS"$i"
    ip link add $VETH"$i" type veth peer name eth0 netns $NS"$i"
    ip link set $VETH"$i" master $BR up
    ip -n $NS"$i" addr add $NET."$i"/24 dev eth0
    ip -n $NS"$i" link set eth0 up
    ip -n $NS"$i" link set lo up
    mkdir -p "$W/h$i"
    start_host "$i"
  done
  for i in $(seq 1 "$n"); do wait_sock "$W/h$i/shoal.sock"; done
  shoal 1 cluster init >/dev/null
  local mt wt
  mt=$(shoal 1 cluster join-token -q manager)
  wt=$(shoal 1 cluster join-token -q worker)
  for i in $(seq 2 "$n"); do
    if [ "$i" -le "$m" ]; then tok=$mt; else tok=$wt; fi
    out=$(shoal "$i" cluster join --token "$tok" $NET.1:4242 2>&1) || { echo "$out" >&2; exit 1; }
  done
  wait_ready "$n"
  echo "registry: $REG (image $REG/busybox:1)"
  for i in $(seq 1 "$n"); do echo "host$i ($NET.$i): --host $(host "$i")  log $W/h$i/shoald.log"; done
}

down() {
  for p in "$W"/h*/pid "$W"/registry.pid; do
    [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
  done
  sleep 1
  for p in "$W"/h*/pid "$W"/registry.pid; do
    [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true
  done
  pkill -9 -f "shoald --data-dir $W/" 2>/dev/null || true
  # Container processes outlive a killed shim: kill them by their cgroups first.
  find /sys/fs/cgroup -path "*/shoal/$NS*/*/cgroup.procs" 2>/dev/null | while read -r f; do
    { xargs -r kill -9 <"$f"; } 2>/dev/null || true
  done
  if [ -f "$W/containerd.pid" ]; then
    pkill -9 -f "containerd-shim-runc-v2 .*$W/containerd" 2>/dev/null || true
    kill "$(cat "$W/containerd.pid")" 2>/dev/null || true
    sleep 1
    kill -9 "$(cat "$W/containerd.pid")" 2>/dev/null || true
  fi
  for ns in $(ip netns list 2>/dev/null | awk -v p="$NS" 'index($1, p) == 1 {print $1}'); do ip netns del "$ns" || true; done
  ip link del $BR 2>/dev/null || true
  grep " $W" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$W"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  host) host "$2" ;;
  registry) echo "$REG" ;;
  exec) shift; i=$1; shift; in_host "$i" "$@" ;;
  start) shift; start_host "$@" ;;
  registry-start) start_registry ;;
  wait-ready) wait_ready "$2" ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
