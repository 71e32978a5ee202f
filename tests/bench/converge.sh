#!/usr/bin/env bash
# Prints, for shoal on one network-namespace host: create -> all running for N replicas, and the
# node's PSS (shoald + containerd + shims) with those tasks running. Asserts nothing.
#   tests/bench/converge.sh [REPLICAS]     (default 50; release binaries in SHOAL_BIN_DIR)
# Needs root and the packages .ci/run installs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-50}
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/release}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-bench}
HOSTS="$ROOT/deploy/hosts.sh"
"$HOSTS" down >/dev/null 2>&1 || true
trap '"$HOSTS" down >/dev/null 2>&1 || true' EXIT
"$HOSTS" up 1 0 >/dev/null
S() { "$SHOAL_BIN_DIR/shoal" --host "$("$HOSTS" host 1)" "$@"; }
IMAGE=10.232.0.254:5000/busybox:1
# Warm the image so the figure is about scheduling and starting, as with a local image in Swarm.
S service create --name warm $IMAGE sleep 3600 >/dev/null
S service rm warm >/dev/null
sleep 2
t0=$(date +%s%N)
S service create --detach --name bench --replicas "$N" $IMAGE sleep 3600 >/dev/null
deadline=$(( $(date +%s) + 300 ))
while :; do
  running=$(S service ls --format json | python3 -c "import json,sys; print(sum(s['running'] for s in json.load(sys.stdin) if s['name']=='bench'))")
  [ "$running" -ge "$N" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "did not converge within 300 s ($running/$N)"; exit 1; }
  sleep 0.05
done
t1=$(date +%s%N)
pss() { awk '/^Pss:/ {s+=$2} END {print s+0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
d=$(pss "$(cat "$SHOAL_HOSTS_DIR/h1/pid")")
c=$(pss "$(cat "$SHOAL_HOSTS_DIR/containerd.pid")")
shims=0; nshims=0
for p in $(pgrep -f "containerd-shim-runc-v2 -namespace shoal-h1"); do shims=$((shims + $(pss "$p"))); nshims=$((nshims + 1)); done
echo "shoal: $N replicas on one node, create -> all running: $(( (t1 - t0) / 1000000 )) ms"
echo "shoal: node PSS with $N tasks: shoald $((d / 1024)) MB + containerd $((c / 1024)) MB + $nshims shim(s) $((shims / 1024)) MB = $(((d + c + shims) / 1024)) MB"
