#!/usr/bin/env bash
# How long a gone task stays visible: on 3 hosts, a service `srv` of 6 tasks on an overlay and a
# global `probe` service on the same network (one task per host, so each host's DNS is asked);
# then `scale srv=6 -> 2`, and `kill -9` of one remaining task's process. Prints, for each, the
# time until every probe's `tasks.srv` answer is exact (no gone address) and, for shoal, until no
# host forwards to a gone address. Asserts nothing.
#   tests/bench/dns.sh [--swarm]    (release binaries in SHOAL_BIN_DIR)
# With --swarm the same runs against a 3-node Docker Swarm in the same run
# (../shared/tools/swarm-local.sh; --endpoint-mode dnsrr, as this kernel has no IPVS).
# Probes are read with nsenter into the probe container's namespaces (the same way for both),
# every 20 ms; every wait is bounded (120 s).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SWARM=0
if [ "${1:-}" = "--swarm" ]; then SWARM=1; shift; fi
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/release}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-bench-dns}
export SHOAL_HOSTS_SET=${SHOAL_HOSTS_SET:-8}
HOSTS="$ROOT/deploy/hosts.sh"
SWARM_LOCAL=${SWARM_LOCAL:-$ROOT/../shared/tools/swarm-local.sh}
LIMIT=120
# Ends at once on SIGTERM (a process 1 that ignores it would hold its address for the 10 s grace).
WORKLOAD='trap "exit 0" TERM; sleep 3600 & wait'

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# The addresses probe process $1 resolves tasks.srv to, one per line, sorted.
resolve() {
  timeout 3 nsenter -t "$1" -n -m busybox nslookup tasks.srv 2>/dev/null |
    awk '/^Name:/ {n=1} n && /^Address:/ {print $2}' | sort
}

# Waits until `$1` (a function) succeeds; prints the ms since $2. Fails after LIMIT s.
wait_for() {
  local check=$1 t0=$2 deadline=$(( $(date +%s) + LIMIT ))
  until "$check"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "not within ${LIMIT}s: $check" >&2; return 1; }
    sleep 0.02
  done
  echo $(( $(now_ms) - t0 ))
}

# Every probe resolves exactly $WANT addresses, none of them in $GONE.
probes_exact() {
  local p out
  for p in $PROBES; do
    out=$(resolve "$p")
    [ "$(printf '%s\n' "$out" | grep -c .)" = "$WANT" ] || return 1
    for g in $GONE; do printf '%s\n' "$out" | grep -qx "$g" && return 1; done
  done
  return 0
}

# No probe resolves an address in $GONE.
probes_forgot() {
  local p out
  for p in $PROBES; do
    out=$(resolve "$p")
    [ -n "$out" ] || return 1
    for g in $GONE; do printf '%s\n' "$out" | grep -qx "$g" && return 1; done
  done
  return 0
}

# No shoal host has a forwarding or neighbour entry for an address in $GONE.
hosts_forgot() {
  local i g mac
  for i in 1 2 3; do
    for g in $GONE; do
      mac=$(printf '02:42:%02x:%02x:%02x:%02x' ${g//./ })
      nsenter --net="/var/run/netns/shoal$SHOAL_HOSTS_SET-h$i" bridge fdb show | grep -q "$mac.* dst " && return 1
      nsenter --net="/var/run/netns/shoal$SHOAL_HOSTS_SET-h$i" ip neigh show nud permanent | grep -q "^$g " && return 1
    done
  done
  return 0
}

shoal_bench() {
  "$HOSTS" down >/dev/null 2>&1 || true
  "$HOSTS" up 3 0 >/dev/null
  S() { "$SHOAL_BIN_DIR/shoal" --host "$("$HOSTS" host 1)" "$@"; }
  local image t0 all left
  image=$("$HOSTS" registry)/busybox:1
  S network create net >/dev/null
  S service create --name srv --replicas 6 --network net "$image" sh -c "$WORKLOAD" >/dev/null
  S service create --name probe --mode global --network net "$image" sleep 3600 >/dev/null
  ps_json() { S service ps "$1" --format json; }
  PROBES=$(ps_json probe | python3 -c "import json,sys; print(' '.join(str(t['pid']) for t in json.load(sys.stdin) if t['state']=='running'))")
  all=$(ps_json srv | python3 -c "import json,sys; print(' '.join(t['networks'][0]['address'].split('/')[0] for t in json.load(sys.stdin) if t['state']=='running'))")
  WANT=6 GONE=""
  wait_for probes_exact "$(now_ms)" >/dev/null
  t0=$(now_ms)
  S service scale --detach srv=2 >/dev/null
  WANT=2
  SHOAL_SCALE_DNS=$(wait_for probes_exact "$t0")
  left=$(ps_json srv | python3 -c "import json,sys; print(' '.join(t['networks'][0]['address'].split('/')[0] for t in json.load(sys.stdin) if t['desired_state']=='running'))")
  GONE=$(for a in $all; do case " $left " in *" $a "*) ;; *) echo "$a";; esac; done | tr '\n' ' ')
  SHOAL_SCALE_FWD=$(wait_for hosts_forgot "$t0")
  local victim_pid victim_addr
  read -r victim_pid victim_addr < <(ps_json srv | python3 -c "import json,sys; t=[t for t in json.load(sys.stdin) if t['state']=='running'][0]; print(t['pid'], t['networks'][0]['address'].split('/')[0])")
  GONE=$victim_addr
  t0=$(now_ms)
  kill -9 "$victim_pid"
  SHOAL_KILL_DNS=$(wait_for probes_forgot "$t0")
  SHOAL_KILL_FWD=$(wait_for hosts_forgot "$t0")
  "$HOSTS" down >/dev/null 2>&1 || true
}

swarm_bench() {
  if ! command -v dockerd >/dev/null; then
    echo "installing docker.io for the Swarm side ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io >/dev/null
  fi
  systemctl stop docker.service docker.socket >/dev/null 2>&1 || true
  "$SWARM_LOCAL" down >/dev/null 2>&1 || true
  "$SWARM_LOCAL" up 3 >/dev/null
  D() { DOCKER_HOST=$("$SWARM_LOCAL" host 1) docker "$@"; }
  pid_of() { DOCKER_HOST=$("$SWARM_LOCAL" host "$1") docker inspect -f '{{.State.Pid}}' "$2"; }
  D network create -d overlay --attachable net >/dev/null
  D service create --name srv --replicas 6 --endpoint-mode dnsrr --network net busybox:local sh -c "$WORKLOAD" >/dev/null 2>&1
  D service create --name probe --mode global --endpoint-mode dnsrr --network net busybox:local sleep 3600 >/dev/null 2>&1
  local i c t0
  PROBES=""
  for i in 1 2 3; do
    c=$(DOCKER_HOST=$("$SWARM_LOCAL" host "$i") docker ps -q --filter label=com.docker.swarm.service.name=probe | head -1)
    PROBES="$PROBES $(pid_of "$i" "$c")"
  done
  WANT=6 GONE=""
  wait_for probes_exact "$(now_ms)" >/dev/null
  t0=$(now_ms)
  D service scale --detach srv=2 >/dev/null 2>&1
  WANT=2
  SWARM_SCALE_DNS=$(wait_for probes_exact "$t0")
  # One remaining task's process, on whichever node runs it.
  local victim_pid="" victim_addr="" ip
  for i in 1 2 3; do
    for c in $(DOCKER_HOST=$("$SWARM_LOCAL" host "$i") docker ps -q --filter label=com.docker.swarm.service.name=srv); do
      ip=$(DOCKER_HOST=$("$SWARM_LOCAL" host "$i") docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")
      victim_pid=$(pid_of "$i" "$c") victim_addr=$ip
      break 2
    done
  done
  GONE=$victim_addr
  t0=$(now_ms)
  kill -9 "$victim_pid"
  SWARM_KILL_DNS=$(wait_for probes_forgot "$t0")
  "$SWARM_LOCAL" down >/dev/null 2>&1 || true
}

trap '"$HOSTS" down >/dev/null 2>&1 || true; [ $SWARM = 1 ] && "$SWARM_LOCAL" down >/dev/null 2>&1; true' EXIT
shoal_bench
echo "shoal_dns_exact_after_scale_6_to_2: $SHOAL_SCALE_DNS ms"
echo "shoal_forwarding_exact_after_scale_6_to_2: $SHOAL_SCALE_FWD ms"
echo "shoal_dns_exact_after_kill: $SHOAL_KILL_DNS ms"
echo "shoal_forwarding_exact_after_kill: $SHOAL_KILL_FWD ms"
if [ $SWARM = 1 ]; then
  swarm_bench
  echo "swarm_dns_exact_after_scale_6_to_2: $SWARM_SCALE_DNS ms"
  echo "swarm_dns_exact_after_kill: $SWARM_KILL_DNS ms"
fi
