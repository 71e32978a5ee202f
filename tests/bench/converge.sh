#!/usr/bin/env bash
# Prints, for N replicas on one node: create -> all running, and the node's PSS (daemon +
# containerd + shims) with those tasks running. Asserts nothing.
#   tests/bench/converge.sh [--swarm] [REPLICAS]    (default 50; release binaries in SHOAL_BIN_DIR)
# With --swarm it measures Docker Swarm the same way in the same run, side by side: it installs
# docker.io when missing and starts its own dockerd in a network namespace (10.233.0.1), with a
# local busybox image, as shoal uses a pre-pulled one.
# Needs root and the packages .ci/run installs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SWARM=0
if [ "${1:-}" = "--swarm" ]; then SWARM=1; shift; fi
N=${1:-50}
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/release}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-bench}
export SHOAL_HOSTS_SET=${SHOAL_HOSTS_SET:-9}
HOSTS="$ROOT/deploy/hosts.sh"
SW=/var/tmp/shoal-bench-swarm
SWNS=shoal-bench-swarm

pss() { awk '/^Pss:/ {s+=$2} END {print s+0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
mb() { echo $(( $1 / 1024 )); }

# Polls `$@` (prints the number of running tasks) until it reaches N; prints the elapsed ms.
wait_running() {
  local t0=$1; shift
  local deadline=$(( $(date +%s) + 300 )) running
  while :; do
    running=$("$@")
    [ "$running" -ge "$N" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || { echo "did not converge within 300 s ($running/$N)" >&2; return 1; }
    sleep 0.05
  done
  echo $(( $(now_ms) - t0 ))
}

shoal_bench() {
  "$HOSTS" down >/dev/null 2>&1 || true
  "$HOSTS" up 1 0 >/dev/null
  S() { "$SHOAL_BIN_DIR/shoal" --host "$("$HOSTS" host 1)" "$@"; }
  local image
  image=$("$HOSTS" registry)/busybox:1
  # Warm the image so the figure is about scheduling and starting, as with a local image in Swarm.
  S service create --name warm "$image" sleep 3600 >/dev/null
  S service rm warm >/dev/null
  sleep 2
  # As light as the Swarm side's poll (a CLI call and a text filter, no interpreter to start):
  # the poller shares the 2 cores with what it measures.
  running() {
    S service ls | awk '$2 == "bench" { split($4, r, "/"); n = r[1] } END { print n + 0 }'
  }
  local t0
  t0=$(now_ms)
  S service create --detach --name bench --replicas "$N" "$image" sleep 3600 >/dev/null
  SHOAL_MS=$(wait_running "$t0" running)
  local d c shims=0 nshims=0 ns
  ns=$(if [ "$SHOAL_HOSTS_SET" = 0 ]; then echo shoal-h1; else echo "shoal$SHOAL_HOSTS_SET-h1"; fi)
  d=$(pss "$(cat "$SHOAL_HOSTS_DIR/h1/pid")")
  c=$(pss "$(cat "$SHOAL_HOSTS_DIR/containerd.pid")")
  for p in $(pgrep -f "containerd-shim-runc-v2 -namespace $ns "); do shims=$((shims + $(pss "$p"))); nshims=$((nshims + 1)); done
  SHOAL_PSS="$(mb $((d + c + shims))) MB (shoald $(mb "$d") + containerd $(mb "$c") + $nshims shim(s) $(mb "$shims"))"
  "$HOSTS" down >/dev/null 2>&1 || true
}

swarm_down() {
  local s
  # Container processes outlive a killed shim: end them first.
  for s in $(pgrep -f "containerd-shim-runc-v2 .*$SW/" || true); do pkill -9 -P "$s" 2>/dev/null || true; done
  [ -f "$SW/docker.pid" ] && kill "$(cat "$SW/docker.pid")" 2>/dev/null || true
  for _ in $(seq 1 50); do [ -f "$SW/docker.pid" ] && kill -0 "$(cat "$SW/docker.pid")" 2>/dev/null || break; sleep 0.2; done
  pkill -9 -f "containerd-shim-runc-v2 .*$SW/" 2>/dev/null || true
  ip netns del $SWNS 2>/dev/null || true
  ip link del shbsw0 2>/dev/null || true
  grep " $SW" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$SW" 2>/dev/null || rm -rf "$SW" || true
}

swarm_bench() {
  if ! command -v dockerd >/dev/null; then
    echo "installing docker.io for the Swarm side ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io >/dev/null
  fi
  # The package's own dockerd would compete for the machine: this benchmark runs its own.
  systemctl stop docker.service docker.socket >/dev/null 2>&1 || true
  swarm_down
  mkdir -p "$SW"
  ip netns add $SWNS
  ip link add shbsw0 type veth peer name eth0 netns $SWNS
  ip addr add 10.233.0.254/24 dev shbsw0
  ip link set shbsw0 up
  ip -n $SWNS addr add 10.233.0.1/24 dev eth0
  ip -n $SWNS link set eth0 up
  ip -n $SWNS link set lo up
  # nsenter --net, not `ip netns exec` (which remounts /sys and hides the cgroup mounts).
  nsenter --net=/var/run/netns/$SWNS dockerd --data-root "$SW/data" --exec-root "$SW/exec" \
    -H "unix://$SW/docker.sock" --pidfile "$SW/docker.pid" >"$SW/dockerd.log" 2>&1 &
  D() { DOCKER_HOST="unix://$SW/docker.sock" docker "$@"; }
  for _ in $(seq 1 150); do D info >/dev/null 2>&1 && break; sleep 0.2; done
  D info >/dev/null || { echo "dockerd did not start; see $SW/dockerd.log" >&2; return 1; }
  local r
  r=$(mktemp -d)
  mkdir -p "$r/bin"
  cp "$(command -v busybox)" "$r/bin/busybox"
  for c in sh sleep; do ln -sf busybox "$r/bin/$c"; done
  tar -C "$r" -c . | D import - busybox:local >/dev/null
  rm -rf "$r"
  D swarm init --advertise-addr 10.233.0.1 >/dev/null
  running() { D service ps bench --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running' || true; }
  local t0
  t0=$(now_ms)
  D service create --detach --name bench --replicas "$N" busybox:local sleep 3600 >/dev/null 2>&1
  SWARM_MS=$(wait_running "$t0" running)
  local dpid d c=0 cpid shims=0 nshims=0
  dpid=$(cat "$SW/docker.pid")
  d=$(pss "$dpid")
  for cpid in $(pgrep -P "$dpid" -f containerd); do c=$((c + $(pss "$cpid"))); done
  for p in $(pgrep -f "containerd-shim-runc-v2 .*$SW/"); do shims=$((shims + $(pss "$p"))); nshims=$((nshims + 1)); done
  SWARM_PSS="$(mb $((d + c + shims))) MB (dockerd $(mb "$d") + containerd $(mb "$c") + $nshims shim(s) $(mb "$shims"))"
  swarm_down
}

trap '"$HOSTS" down >/dev/null 2>&1 || true; [ $SWARM = 1 ] && swarm_down' EXIT
shoal_bench
if [ $SWARM = 1 ]; then swarm_bench; fi
echo "converge $N replicas shoal: $SHOAL_MS ms"
[ $SWARM = 1 ] && echo "converge $N replicas swarm: $SWARM_MS ms"
printf '%-44s %s\n' "$N replicas on one node" "create -> all running | node PSS with the $N tasks"
printf '%-44s %s\n' "shoal" "$SHOAL_MS ms | $SHOAL_PSS"
if [ $SWARM = 1 ]; then printf '%-44s %s\n' "Docker Swarm $(dockerd --version | awk '{print $3}' | tr -d ,)" "$SWARM_MS ms | $SWARM_PSS"; fi
