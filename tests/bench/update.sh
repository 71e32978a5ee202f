#!/usr/bin/env bash
# Rolling update times against the floor their settings impose, for two scenarios:
#   fast:     30 tasks on 2 nodes, parallelism 5, delay 0, monitor 5 s; the workload stops on
#             SIGTERM. Floor: the monitor period after the last batch (5 s).
#   stubborn: 50 tasks on 1 node, parallelism 5, monitor 5 s; the workload ignores SIGTERM and
#             is killed at the end of its 10 s grace period, so every stop-first batch waits
#             10 s. Floor: 10 batches x 10 s + the monitor period (105 s).
# Each update is a spec change (an environment variable) reaching every task; its time runs
# from the update command to the update state `completed`, both polled the same way. Prints
# `<name>: <value> <unit>` lines; asserts nothing.
#   tests/bench/update.sh [--swarm] [fast|stubborn ...]   (default: both; release binaries in
#   SHOAL_BIN_DIR)
# With --swarm it runs the same scenarios on Docker Swarm in the same run (../shared's
# swarm-local.sh: one dockerd per node in network namespaces, busybox:local on each).
# Needs root and the packages .ci/run installs (docker.io for --swarm).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SWARM=0
if [ "${1:-}" = "--swarm" ]; then SWARM=1; shift; fi
SCENARIOS=${*:-fast stubborn}
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/release}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-bench-update}
export SHOAL_HOSTS_SET=${SHOAL_HOSTS_SET:-8}
HOSTS="$ROOT/deploy/hosts.sh"
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"
SWARM_LOCAL=${SWARM_LOCAL:-$ROOT/../shared/tools/swarm-local.sh}
# Stops at once on SIGTERM (the shell's trap ends `wait`), as a well-behaved service does.
FAST_CMD='trap "exit 0" TERM; sleep 3600 & wait'
# PID 1 without an init and without a handler: SIGTERM is ignored, SIGKILL ends it.
STUBBORN_CMD='exec sleep 3600'

# scenario -> replicas workers command-kind floor-ms
params() {
  case $1 in
    fast) echo "30 1 fast 5000" ;;
    stubborn) echo "50 0 stubborn 105000" ;;
    *) echo "unknown scenario $1 (fast, stubborn)" >&2; return 1 ;;
  esac
}

cmd_of() { if [ "$1" = fast ]; then echo "$FAST_CMD"; else echo "$STUBBORN_CMD"; fi; }

shoal_run() {
  local scenario=$1 n workers kind
  read -r n workers kind _ <<<"$(params "$scenario")"
  "$HOSTS" down >/dev/null 2>&1 || true
  "$HOSTS" up 1 "$workers" >/dev/null
  S() { "$SHOAL_BIN_DIR/shoal" --host "$("$HOSTS" host 1)" "$@"; }
  local image
  image=$("$HOSTS" registry)/busybox:1
  running() {
    S service ls --format json | python3 -c "import json,sys; print(sum(s['running'] for s in json.load(sys.stdin) if s['name']=='bench'))"
  }
  state() {
    S service ls --format json | python3 -c "import json,sys; print([s['update_state'] for s in json.load(sys.stdin) if s['name']=='bench'][0])"
  }
  S service create --detach --name bench --replicas "$n" --env V=1 --stop-grace-period 10s \
    --update-parallelism 5 --update-delay 0s --update-monitor 5s --update-order stop-first \
    "$image" sh -c "$(cmd_of "$kind")" >/dev/null
  wait_for "$n" 300 running
  local t0
  t0=$(now_ms)
  S service update --detach --env-add V=2 bench >/dev/null
  wait_completed 600 state
  echo $(( $(now_ms) - t0 ))
  "$HOSTS" down >/dev/null 2>&1 || true
}

swarm_run() {
  local scenario=$1 n workers kind
  read -r n workers kind _ <<<"$(params "$scenario")"
  "$SWARM_LOCAL" down >/dev/null 2>&1 || true
  "$SWARM_LOCAL" up $((workers + 1)) 1 >/dev/null
  D() { DOCKER_HOST=$("$SWARM_LOCAL" host 1) docker "$@"; }
  running() { D service ps bench --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running' || true; }
  state() { D service inspect bench --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}'; }
  D service create --detach --name bench --replicas "$n" --env V=1 --stop-grace-period 10s \
    --update-parallelism 5 --update-delay 0s --update-monitor 5s --update-order stop-first \
    busybox:local sh -c "$(cmd_of "$kind")" >/dev/null 2>&1
  wait_for "$n" 300 running
  local t0
  t0=$(now_ms)
  D service update --detach --env-add V=2 bench >/dev/null 2>&1
  wait_completed 600 state
  echo $(( $(now_ms) - t0 ))
  "$SWARM_LOCAL" down >/dev/null 2>&1 || true
}

cleanup() {
  "$HOSTS" down >/dev/null 2>&1 || true
  if [ $SWARM = 1 ]; then "$SWARM_LOCAL" down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
if [ $SWARM = 1 ]; then swarm_ready; fi

for scenario in $SCENARIOS; do
  read -r _ _ _ floor <<<"$(params "$scenario")"
  echo "update_${scenario}_floor: $(secs "$floor") s"
  ms=$(shoal_run "$scenario")
  echo "update_${scenario}_shoal: $(secs "$ms") s"
  echo "update_${scenario}_shoal_over_floor: $(ratio "$ms" "$floor") x"
  if [ $SWARM = 1 ]; then
    ms=$(swarm_run "$scenario")
    echo "update_${scenario}_swarm: $(secs "$ms") s"
    echo "update_${scenario}_swarm_over_floor: $(ratio "$ms" "$floor") x"
  fi
done
