#!/usr/bin/env bash
# A 10-service stack (2 replicas each, one overlay network) on 3 nodes: `stack deploy` -> every
# task running, then a redeploy with one service changed -> that service's update completed, and
# how many tasks of the 9 unchanged services were replaced by it (should be 0). Prints
# `<name>: <value> <unit>` lines; asserts nothing.
#   tests/bench/stack.sh [--swarm]   (release binaries in SHOAL_BIN_DIR)
# With --swarm it measures Docker Swarm (`docker stack deploy`, ../shared's swarm-local.sh, three
# dockerds in network namespaces) with the same file in the same run. Services use
# endpoint_mode dnsrr on both: this kernel has no IPVS for Swarm's VIPs.
# Needs root and the packages .ci/run installs (docker.io for --swarm).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SWARM=0
if [ "${1:-}" = "--swarm" ]; then SWARM=1; shift; fi
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/release}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-bench-stack}
export SHOAL_HOSTS_SET=${SHOAL_HOSTS_SET:-6}
HOSTS="$ROOT/deploy/hosts.sh"
# shellcheck source=tests/bench/lib.sh
. "$ROOT/tests/bench/lib.sh"
SWARM_LOCAL=${SWARM_LOCAL:-$ROOT/../shared/tools/swarm-local.sh}
WORK=$(mktemp -d)
SERVICES=10
REPLICAS=2
CHANGED=s5

# The stack file for IMAGE, with VERSION in the changed service's environment.
stack_file() {
  local image=$1 version=$2
  echo "version: \"3.8\""
  echo "services:"
  for i in $(seq 1 $SERVICES); do
    cat <<EOF
  s$i:
    image: $image
    command: sh -c 'trap "exit 0" TERM; sleep 3600 & wait'
    environment:
      VERSION: "$([ "s$i" = $CHANGED ] && echo "$version" || echo 1)"
    networks: [net]
    deploy:
      replicas: $REPLICAS
      endpoint_mode: dnsrr
      update_config:
        parallelism: 2
        delay: 0s
        monitor: 1s
EOF
  done
  echo "networks:"
  echo "  net:"
  echo "    driver: overlay"
}

shoal_run() {
  "$HOSTS" down >/dev/null 2>&1 || true
  "$HOSTS" up 1 2 >/dev/null
  S() { "$SHOAL_BIN_DIR/shoal" --host "$("$HOSTS" host 1)" "$@"; }
  local image
  image=$("$HOSTS" registry)/busybox:1
  # Warm the image on every node, as Swarm's nodes have theirs locally.
  S service create --name warm --mode global "$image" sleep 3600 >/dev/null
  S service rm warm >/dev/null
  stack_file "$image" 1 >"$WORK/shoal-1.yml"
  stack_file "$image" 2 >"$WORK/shoal-2.yml"
  running() {
    S stack ps bench --format json | python3 -c "import json,sys; print(sum(1 for t in json.load(sys.stdin) if t['state']=='running' and t['desired_state']=='running'))"
  }
  ids() {
    S stack ps bench --format json | python3 -c "import json,sys; print(' '.join(sorted(t['id'] for t in json.load(sys.stdin) if t['desired_state']=='running' and not t['name'].startswith('bench_$CHANGED.'))))"
  }
  state() {
    S service ls --format json | python3 -c "import json,sys; print([s['update_state'] for s in json.load(sys.stdin) if s['name']=='bench_$CHANGED'][0])"
  }
  local t0 before after
  t0=$(now_ms)
  S stack deploy --detach -c "$WORK/shoal-1.yml" bench >/dev/null
  wait_for $((SERVICES * REPLICAS)) 300 running
  SHOAL_DEPLOY=$(( $(now_ms) - t0 ))
  before=$(ids)
  t0=$(now_ms)
  S stack deploy --detach -c "$WORK/shoal-2.yml" bench >/dev/null
  wait_completed 300 state
  SHOAL_REDEPLOY=$(( $(now_ms) - t0 ))
  after=$(ids)
  SHOAL_RESTARTED=$(comm -23 <(tr ' ' '\n' <<<"$before" | sort) <(tr ' ' '\n' <<<"$after" | sort) | grep -c . || true)
  "$HOSTS" down >/dev/null 2>&1 || true
}

swarm_run() {
  "$SWARM_LOCAL" down >/dev/null 2>&1 || true
  "$SWARM_LOCAL" up 3 1 >/dev/null
  D() { DOCKER_HOST=$("$SWARM_LOCAL" host 1) docker "$@"; }
  stack_file busybox:local 1 >"$WORK/swarm-1.yml"
  stack_file busybox:local 2 >"$WORK/swarm-2.yml"
  running() { D stack ps bench --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running' || true; }
  ids() { D stack ps bench --filter desired-state=running --format '{{.ID}} {{.Name}}' | grep -v " bench_$CHANGED\." | awk '{print $1}' | sort | tr '\n' ' '; }
  state() { D service inspect "bench_$CHANGED" --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}'; }
  local t0 before after
  t0=$(now_ms)
  D stack deploy -c "$WORK/swarm-1.yml" bench >/dev/null 2>&1
  wait_for $((SERVICES * REPLICAS)) 300 running
  SWARM_DEPLOY=$(( $(now_ms) - t0 ))
  before=$(ids)
  t0=$(now_ms)
  D stack deploy -c "$WORK/swarm-2.yml" bench >/dev/null 2>&1
  wait_completed 300 state
  SWARM_REDEPLOY=$(( $(now_ms) - t0 ))
  after=$(ids)
  SWARM_RESTARTED=$(comm -23 <(tr ' ' '\n' <<<"$before" | sort) <(tr ' ' '\n' <<<"$after" | sort) | grep -c . || true)
  "$SWARM_LOCAL" down >/dev/null 2>&1 || true
}

cleanup() {
  "$HOSTS" down >/dev/null 2>&1 || true
  if [ $SWARM = 1 ]; then "$SWARM_LOCAL" down >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ $SWARM = 1 ]; then swarm_ready; fi

shoal_run
echo "stack_deploy_shoal: $(secs "$SHOAL_DEPLOY") s"
echo "stack_redeploy_one_changed_shoal: $(secs "$SHOAL_REDEPLOY") s"
echo "stack_redeploy_unchanged_tasks_replaced_shoal: $SHOAL_RESTARTED tasks"
if [ $SWARM = 1 ]; then
  swarm_run
  echo "stack_deploy_swarm: $(secs "$SWARM_DEPLOY") s"
  echo "stack_redeploy_one_changed_swarm: $(secs "$SWARM_REDEPLOY") s"
  echo "stack_redeploy_unchanged_tasks_replaced_swarm: $SWARM_RESTARTED tasks"
fi
