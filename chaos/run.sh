#!/usr/bin/env bash
# Fault scenarios on network-namespace hosts (3 managers + 2 workers, deploy/hosts.sh set 10,
# real containerd, the local registry): a workload writes to the cluster while a fault is
# injected and healed, every write recorded with its outcome and times; the hosts' containers
# and the service's version are sampled throughout; at the end the checker (`shoal-chaos
# check`) judges the record against the cluster's final state, the cluster must converge, no
# log may hold a panic, and once the service and its network are removed every host must be
# back to what it had before: no container, mount or nftables rule left behind.
#   chaos/run.sh [SCENARIO ...]     every scenario once by default
#   chaos/run.sh --soak MINUTES     one cluster, random faults for that long, then the same checks
# Debug binaries from SHOAL_BIN_DIR (default target/debug); CHAOS_SECONDS sets the workload's
# length per scenario (default 24); CHAOS_KEEP=1 leaves a failed scenario's hosts up for a look.
# Needs root. Every wait is bounded.
#
# Scenarios (partitions are nftables rules in the hosts' network namespaces):
#   leader-kill         kill -9 of the leader under write load
#   follower-kill       kill -9 of a follower
#   managers-kill       every manager killed and restarted, one after the other
#   worker-kill         kill -9 of a worker with live containers
#   agent-restart       a worker's shoald stopped and started again under its live containers
#   leader-partition    the leader cut off from every other host (it steps down, refuses writes)
#   follower-partition  a follower cut off from every other host
#   one-way             the leader's packets to one follower dropped, the other way open
#   worker-cutoff       a worker cut off from the managers only (its tasks are replaced; its old
#                       containers stop once it is back)
#   stop-on-disconnect  the same with the service's --stop-on-disconnect 5s: the cut-off worker
#                       stops its containers within 9 s of the cut
#   disk-wipe           a follower's data wiped, the node removed and joined again
#   quorum-force        two managers lost, the survivor restarted with --force-new-cluster, the
#                       two wiped and joined again
#   registry-down       the registry stopped during an image update (clear task errors; the
#                       update completes once it is back)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/debug}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-chaos}
export SHOAL_HOSTS_SET=${SHOAL_HOSTS_SET:-10}
HOSTS="$ROOT/deploy/hosts.sh"
W=$SHOAL_HOSTS_DIR
WORK=$(mktemp -d)
RUN_SECONDS=${CHAOS_SECONDS:-24}
ALL="leader-kill follower-kill managers-kill worker-kill agent-restart leader-partition follower-partition one-way worker-cutoff stop-on-disconnect disk-wipe quorum-force registry-down"
# Faults the soak picks from: each heals itself and leaves the cluster as it found it.
SOAK_FAULTS="leader-kill follower-kill worker-kill agent-restart leader-partition follower-partition one-way worker-cutoff"
NET=10.232.$SHOAL_HOSTS_SET
NS=shoal$SHOAL_HOSTS_SET-h
N_HOSTS=5
GRACE_MS=15000

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
S() { timeout 15 "$SHOAL_BIN_DIR/shoal" --host "$("$HOSTS" host "$1")" "${@:2}"; }
# The first manager that answers.
SM() { local i; for i in 1 2 3; do S "$i" "$@" 2>/dev/null && return 0; done; return 1; }
py() { python3 -c "$@"; }
ctr_in() { ctr --address "$W/containerd/containerd.sock" -n "$NS$1" "${@:2}"; }

# The host number (1-3) of the current leader, from any manager that answers.
leader() {
  local i addr
  for _ in $(seq 1 40); do
    for i in 1 2 3; do
      addr=$(S "$i" info --format json 2>/dev/null | py "import json,sys; print(json.load(sys.stdin)['raft']['leader_addr'])" 2>/dev/null) || continue
      [ -n "$addr" ] || continue
      echo "${addr%%:*}" | awk -F. '{print $4}'
      return 0
    done
    sleep 0.5
  done
  echo "no manager knows a leader" >&2
  return 1
}
follower() { echo $(( $1 % 3 + 1 )); }
others() { local i; for i in $(seq 1 $N_HOSTS); do [ "$i" = "$1" ] || echo "$i"; done; }

# Host cut-offs, recorded for the checker: a host whose agent cannot reach the managers keeps
# its containers running (as in Swarm), so they are excused from then until a grace after it
# is back, by which its agent must have stopped the ones that were replaced.
declare -A CUT_FROM=()
cut_begin() { CUT_FROM[$1]=$(now_ms); }
cut_end() { printf '{"host":"host%s","from_ms":%s,"to_ms":%s}\n' "$1" "${CUT_FROM[$1]}" "$(now_ms)" >>"$DIR/cuts.jsonl"; }

# Drops packets in host $1's namespace: `both` ways or only `out` of it, to and from the
# hosts that follow.
block() {
  local a=$1 dir=$2 set
  shift 2
  set=$(printf "$NET.%s, " "$@")
  set=${set%, }
  {
    echo "table inet chaos {"
    echo "  chain out { type filter hook output priority -300; ip daddr { $set } drop; }"
    [ "$dir" = both ] && echo "  chain in { type filter hook input priority -300; ip saddr { $set } drop; }"
    echo "}"
  } | ip netns exec "$NS$a" nft -f -
}
unblock() { ip netns exec "$NS$1" nft delete table inet chaos; }

kill9() { kill -9 "$(cat "$W/h$1/pid")" 2>/dev/null || true; }
# Stops host $1's shoald with SIGTERM and waits (up to 20 s) for it to exit.
stop_host() {
  local pid; pid=$(cat "$W/h$1/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "host$1's shoald did not stop within 20 s of SIGTERM" >&2
  return 1
}
# Starts host $1 again (extra shoald arguments follow) and waits until its socket answers.
restart_host() {
  "$HOSTS" start "$@" >/dev/null
  for _ in $(seq 1 100); do S "$1" info >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "host$1's shoald does not answer after a restart" >&2
  return 1
}
ready() { "$HOSTS" wait-ready "$N_HOSTS" >/dev/null; }
# Wipes host $1's state (shoald must be stopped), takes its old node out of the cluster (from
# manager $2) and joins it again as a manager with a fresh identity.
rejoin_wiped() {
  local i=$1 via=$2 token removed=0
  # A wiped disk takes its mounts along (the killed shoald left its secrets' tmpfs mounted).
  grep " $W/h$i/data" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
  rm -rf "$W/h$i/data"
  S "$via" node demote "host$i" >/dev/null
  # The leader takes a demoted manager out of the raft membership on its own time.
  for _ in $(seq 1 100); do
    if S "$via" node rm --force "host$i" >/dev/null 2>"$DIR/rm.err"; then removed=1; break; fi
    sleep 0.2
  done
  [ "$removed" = 1 ] || { echo "host$i's old node could not be removed: $(cat "$DIR/rm.err")" >&2; return 1; }
  restart_host "$i"
  token=$(S "$via" cluster join-token -q manager)
  S "$i" cluster join --token "$token" "$NET.$via:4242" >/dev/null
}

hold() { sleep $((RUN_SECONDS / 2)); }

# Kills host $1 with -9 and brings it back after $2 seconds (default: the hold).
killed_for() {
  kill9 "$1"; cut_begin "$1"; sleep "${2:-$((RUN_SECONDS / 2))}"
  restart_host "$1"; ready; cut_end "$1"
}
# Blocks host $1's packets (`block` arguments follow) for the hold, recording host $2 as the
# one cut off.
blocked_for() {
  local a=$1 cut=$2
  shift 2
  block "$a" "$@"; cut_begin "$cut"; hold
  unblock "$a"; ready; cut_end "$cut"
}

# Each fault_NAME injects its fault, holds it, heals it, records cut-offs and sets FAULT.
fault_leader-kill() {
  local v; v=$(leader)
  FAULT="kill -9 of host$v (the leader)"
  killed_for "$v"
}
fault_follower-kill() {
  local v; v=$(follower "$(leader)")
  FAULT="kill -9 of host$v (a follower)"
  killed_for "$v"
}
fault_managers-kill() {
  local v
  FAULT="kill -9 of host1, host2 and host3 in turn, each back before the next"
  for v in 1 2 3; do killed_for "$v" 3; done
}
fault_worker-kill() {
  FAULT="kill -9 of host4 (a worker with live containers)"
  killed_for 4
}
fault_agent-restart() {
  FAULT="host5's shoald stopped (SIGTERM) and started again under its live containers"
  cut_begin 5; stop_host 5; sleep 3
  restart_host 5; ready; cut_end 5
}
fault_leader-partition() {
  local v; v=$(leader)
  FAULT="host$v (the leader) cut off from every other host"
  # shellcheck disable=SC2046
  blocked_for "$v" "$v" both $(others "$v")
}
fault_follower-partition() {
  local v; v=$(follower "$(leader)")
  FAULT="host$v (a follower) cut off from every other host"
  # shellcheck disable=SC2046
  blocked_for "$v" "$v" both $(others "$v")
}
fault_one-way() {
  local l f; l=$(leader); f=$(follower "$l")
  FAULT="host$l's (the leader's) packets to host$f dropped, host$f's to host$l delivered"
  blocked_for "$l" "$f" out "$f"
}
fault_worker-cutoff() {
  FAULT="host4 (a worker) cut off from the managers (host1-3), not from host5"
  blocked_for 4 4 both 1 2 3
}
fault_stop-on-disconnect() {
  FAULT="host4 (a worker) cut off from the managers; web stops on disconnect after 5 s"
  blocked_for 4 4 both 1 2 3
}
fault_disk-wipe() {
  local l v; l=$(leader); v=$(follower "$l")
  FAULT="host$v (a follower) killed, its data wiped, its node removed and joined again"
  kill9 "$v"; cut_begin "$v"; sleep 3
  rejoin_wiped "$v" "$l"; ready; cut_end "$v"
}
fault_quorum-force() {
  local l a b; l=$(leader); a=$(follower "$l"); b=$(follower "$a")
  FAULT="host$a and host$b killed (quorum lost), host$l restarted with --force-new-cluster, host$a and host$b wiped and joined again"
  kill9 "$a"; cut_begin "$a"; kill9 "$b"; cut_begin "$b"
  sleep $((RUN_SECONDS / 4))
  kill9 "$l"; cut_begin "$l"
  restart_host "$l" --force-new-cluster
  for _ in $(seq 1 100); do S "$l" node ls >/dev/null 2>&1 && break; sleep 0.2; done
  cut_end "$l"
  rejoin_wiped "$a" "$l"; rejoin_wiped "$b" "$l"
  # The old nodes are gone; the new ones count.
  ready; cut_end "$a"; cut_end "$b"
}
fault_registry-down() {
  local t0 ok=0 err rc
  FAULT="the registry stopped during an image update, started again after $((RUN_SECONDS / 2)) s"
  kill -9 "$(cat "$W/registry.pid")" 2>/dev/null || true
  t0=$(now_ms)
  set +e
  S "$(leader)" service update --detach --image "$("$HOSTS" registry)/busybox:hc" --no-healthcheck web >/dev/null 2>"$DIR/image.err"
  rc=$?
  set -e
  printf '{"object":"service/web#image","value":"%s","start_ms":%s,"end_ms":%s,"outcome":"%s"}\n' \
    "$("$HOSTS" registry)/busybox:hc" "$t0" "$(now_ms)" "$(outcome "$rc" "$(cat "$DIR/image.err")")" >>"$DIR/ops.jsonl"
  # The tasks that cannot pull must say why, naming the image.
  for _ in $(seq 1 $((RUN_SECONDS * 2))); do
    err=$(SM service ps web --format json | py "
import json, sys
errs = [t.get('error', '') for t in json.load(sys.stdin) if 'busybox:hc' in t.get('error', '')]
print(errs[0] if errs else '')") || true
    if [ -n "$err" ]; then ok=1; break; fi
    sleep 0.5
  done
  if [ "$ok" = 1 ]; then echo "task error while the registry was down: $err" >"$DIR/notes"
  else echo "no task said why it could not pull busybox:hc while the registry was down" >"$DIR/problems"; fi
  hold
  "$HOSTS" registry-start
}

# What a client was told, from the CLI's exit status and message: 0 acknowledged; 3 (the
# daemon says it may or may not have happened), a timeout or a connection lost mid-call
# unknown; anything else refused (a daemon that cannot be reached at all never got it).
outcome() {
  case $1 in
    0) echo ok ;;
    3 | 124) echo unknown ;;
    *) if grep -q "cannot reach shoald" <<<"$2" && ! grep -q "No such file\|Connection refused" <<<"$2"; then echo unknown; else echo failed; fi ;;
  esac
}

# Writes for $1 seconds, each to a random manager, one JSON line per write in $2. Objects:
# service/web#replicas (scale), service/web#V (an environment variable: a rolling update),
# secret/chaosK (create or remove), service/svcK (create or remove) and node/host5#chaos (a
# label). WORKLOAD names the kinds it cycles through.
workload() {
  local until=$(( $(date +%s) + $1 )) out=$2 n=0 i obj value args t0 rc err stdin k
  # shellcheck disable=SC2206
  local kinds=($WORKLOAD)
  while [ "$(date +%s)" -lt "$until" ]; do
    n=$((n + 1))
    i=$(( RANDOM % 3 + 1 ))
    stdin=/dev/null
    case ${kinds[$((n % ${#kinds[@]}))]} in
      scale) obj="service/web#replicas"; value=$(( RANDOM % 4 + 2 )); args=(service scale --detach "web=$value") ;;
      env) obj="service/web#V"; value=$n; args=(service update --detach --env-add "V=$value" web) ;;
      secret) k=$(( RANDOM % 3 )); obj="secret/chaos$k"
         if [ $((RANDOM % 2)) = 0 ]; then value=1; args=(secret create "chaos$k" -); stdin=$WORK/secret
         else value=; args=(secret rm "chaos$k"); fi ;;
      service) k=$(( RANDOM % 3 )); obj="service/svc$k"
         # No replicas: a service created and removed in the store only.
         if [ $((RANDOM % 2)) = 0 ]; then value=1; args=(service create --detach --name "svc$k" --replicas 0 "$("$HOSTS" registry)/busybox:1")
         else value=; args=(service rm "svc$k"); fi ;;
      label) obj="node/host5#chaos"; value=$n; args=(node update --label-add "chaos=$n" host5) ;;
    esac
    t0=$(now_ms)
    set +e
    err=$(S "$i" "${args[@]}" 2>&1 >/dev/null <"$stdin")
    rc=$?
    set -e
    if [ -n "$value" ]; then value="\"$value\""; else value=null; fi
    printf '{"object":"%s","value":%s,"start_ms":%s,"end_ms":%s,"outcome":"%s"}\n' \
      "$obj" "$value" "$t0" "$(now_ms)" "$(outcome "$rc" "$err")" >>"$out"
    sleep 0.2
  done
}

# Samples, until the file $3 exists, every host's running containers of `web` (JSON lines in
# $1) and web's version (in $2).
sampler() {
  local out=$1 versions=$2 stop=$3 i tasks ids at v
  for _ in $(seq 1 20000); do
    [ -e "$stop" ] && return 0
    at=$(now_ms)
    v=$(SM service inspect web --format json | py "import json,sys; print(int(json.load(sys.stdin)[0]['meta']['version']))" 2>/dev/null) || v=
    [ -n "$v" ] && printf '{"object":"service/web","at_ms":%s,"version":%s}\n' "$at" "$v" >>"$versions"
    tasks=$(SM service ps web --format json) || tasks=
    [ -n "$tasks" ] || { sleep 0.5; continue; }
    ids=$(for i in $(seq 1 $N_HOSTS); do
      ctr_in "$i" tasks ls 2>/dev/null | awk -v h="host$i" 'NR > 1 && $3 == "RUNNING" {print h, $1}'
    done)
    python3 - "$(now_ms)" "$tasks" "$ids" "$out.tasks" >>"$out" <<'PY'
import json, sys
at, tasks, ids = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3].split("\n")
slot = {t["id"]: t["slot"] for t in tasks}
running = []
for line in ids:
    if not line.strip():
        continue
    host, cid = line.split()
    if cid in slot:
        running.append({"service": "web", "slot": slot[cid], "host": host, "task": cid})
print(json.dumps({"at_ms": at, "running": running}))
# The task table beside it, to tell afterwards what the leader had decided of each container.
keep = ("id", "slot", "node", "desired_state", "state", "error")
with open(sys.argv[4], "a") as f:
    f.write(json.dumps({"at_ms": at, "tasks": [{k: t.get(k) for k in keep} for t in tasks]}) + "\n")
PY
    sleep 0.5
  done
}

# For each slot the checker saw running twice (lines of $1), what the leader's task table ($2)
# said of that slot at that sample and the one before: which task each container was.
slot_story() {
  python3 - "$1" "$2" <<'PY' || true
import json, re, sys
seen = set()
samples = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
for line in open(sys.argv[1]):
    m = re.search(r"web\.(\d+) ran \d+ times at (\d+) ms", line)
    if not m or m.groups() in seen:
        continue
    seen.add(m.groups())
    slot, at = int(m.group(1)), int(m.group(2))
    i = next((k for k, s in enumerate(samples) if s["at_ms"] == at), None)
    for h in (json.loads(l) for l in open(sys.argv[2][:-len(".tasks")]) if l.strip()):
        if h["at_ms"] == at:
            print("  containers: " + ", ".join(f"{r['task']} on {r['host']}" for r in h["running"] if r["slot"] == slot))
    for s in samples[max(0, (i or 0) - 1):(i or 0) + 1] if i is not None else []:
        for t in s["tasks"]:
            if t["slot"] == slot:
                print(f"  web.{slot} at {s['at_ms']} ms: task {t['id']} on {t['node']}: desired {t['desired_state']}, state {t['state']} {t['error'] or ''}")
PY
}

# Waits (up to 90 s) until `web` runs as many tasks as it wants with no update under way;
# prints the ms it took.
converge() {
  local t0 deadline=$(( $(date +%s) + 90 )) v
  t0=$(now_ms)
  while [ "$(date +%s)" -lt "$deadline" ]; do
    v=$(SM service ls --format json | py "import json,sys; s=[x for x in json.load(sys.stdin) if x['name']=='web'][0]; print(1 if s['running']==s['replicas'] and s['update_state'] in ('', 'completed') else 0)" 2>/dev/null) || v=0
    if [ "$v" = 1 ]; then echo $(( $(now_ms) - t0 )); return 0; fi
    sleep 0.5
  done
  echo "web did not converge within 90 s: $(SM service ls --format json | tr -d '\n' | head -c 600)" >&2
  SM service ps web >&2 || true
  return 1
}

# The final values of the workload's objects, as JSON.
finals() {
  local svc secrets node
  svc=$(SM service inspect web --format json) || return 1
  secrets=$(SM secret ls --format json) || return 1
  node=$(SM node inspect host5 --format json) || return 1
  services=$(SM service ls --format json) || return 1
  python3 - "$svc" "$secrets" "$node" "$services" <<'PY'
import json, sys
s = json.loads(sys.argv[1])[0]["spec"]
c = s["task_template"]["container"]
env = dict(e.split("=", 1) for e in c.get("env", []))
out = {"service/web#replicas": str(s["replicated"]["replicas"]), "service/web#image": c["image"]}
if "V" in env:
    out["service/web#V"] = env["V"]
for x in json.loads(sys.argv[2]):
    if x["name"].startswith("chaos"):
        out["secret/" + x["name"]] = "1"
for x in json.loads(sys.argv[4]):
    if x["name"].startswith("svc"):
        out["service/" + x["name"]] = "1"
labels = json.loads(sys.argv[3])[0]["node"].get("spec", {}).get("annotations", {}).get("labels", {})
if "chaos" in labels:
    out["node/host5#chaos"] = labels["chaos"]
print(json.dumps(out))
PY
}

# What each host holds that a service could leave behind: containers in its containerd
# namespace, mounts under the hosts' directory, network namespaces, its nftables ruleset.
footprint() {
  local i
  for i in $(seq 1 $N_HOSTS); do
    echo "host$i containers: $(ctr_in "$i" containers ls -q 2>/dev/null | wc -l)"
    echo "host$i nftables: $(ip netns exec "$NS$i" nft list ruleset 2>/dev/null | md5sum | cut -c1-12)"
  done
  echo "mounts: $(grep -c " $W" /proc/mounts || true)"
  echo "network namespaces: $(ip netns list | wc -l)"
}

# Removes the service and its network and waits (up to 60 s) until every host is back to
# the footprint in $1; prints what differs if not.
leaks() {
  local base=$1 now
  SM service rm web >/dev/null || true
  local k
  for k in 0 1 2; do SM service rm "svc$k" >/dev/null 2>&1 || true; done
  for _ in $(seq 1 60); do
    SM network rm chaosnet >/dev/null 2>&1 && break
    sleep 1
  done
  for _ in $(seq 1 120); do
    now=$(footprint)
    [ "$now" = "$(cat "$base")" ] && return 0
    sleep 0.5
  done
  echo "left behind after the service and its network were removed (before -> after):"
  diff <(cat "$base") <(echo "$now") | grep '^[<>]' | sed 's/^/  /'
  # What each host's log says of each container left: how it came to outlive its task.
  local i id
  for i in $(seq 1 $N_HOSTS); do
    for id in $(ctr_in "$i" containers ls -q 2>/dev/null); do
      echo "  host$i still holds container $id; its log of it:"
      grep -F "$id" "$W/h$i/shoald.log" | tail -12 | cut -c1-400 | sed 's/^/    /' || true
    done
  done
  return 1
}

# Clean-ups that failed and containers an agent's janitor removed (no task accounted for
# them): none is a failure of the run (the janitor is there for them), each is reported.
swept() {
  local i
  for i in $(seq 1 $N_HOSTS); do
    grep -E "no assignment accounts for|removing the container" "$W/h$i/shoald.log" 2>/dev/null | cut -c1-400 \
      | sed "s/^/note: host$i: /" || true
  done
  return 0
}

# Panics and crashes: any "panicked at" in a shoald log, any shoald not running.
crashes() {
  local i bad=0
  for i in $(seq 1 $N_HOSTS); do
    if grep -q "panicked at" "$W/h$i/shoald.log"; then
      echo "host$i's log holds a panic:"; grep -A3 "panicked at" "$W/h$i/shoald.log" | head -8 | sed 's/^/  /'; bad=1
    fi
    kill -0 "$(cat "$W/h$i/pid")" 2>/dev/null || { echo "host$i's shoald is not running"; tail -5 "$W/h$i/shoald.log" | sed 's/^/  /'; bad=1; }
  done
  return $bad
}

# One run: a cluster, the service, the workload and sampler, the faults of $2 (a scenario
# name, or `soak`), then every check. $3: the workload's length in seconds.
run() {
  local name=$1 faults=$2 seconds=$3 verdict=0 took t
  DIR=$WORK/$name
  mkdir -p "$DIR"
  : >"$DIR/cuts.jsonl"; : >"$DIR/ops.jsonl"; : >"$DIR/versions.jsonl"; : >"$DIR/hosts.jsonl"
  "$HOSTS" up 3 2 >/dev/null
  footprint >"$DIR/footprint"
  SM network create --driver overlay chaosnet >/dev/null
  local extra=() checks=()
  WORKLOAD="scale env secret service label"
  if [ "$name" = stop-on-disconnect ]; then
    # web's tasks stay where they are (no scale, no update), so the cut-off worker surely
    # runs some when it is cut off.
    WORKLOAD="secret service label"
    # On the workers only, so the one cut off surely runs some.
    extra=(--stop-on-disconnect 5s --constraint node.role==worker)
    # 5 s from the last answer, the agent's look twice a second, the stop, a sample a second.
    checks=(--stopped-within-ms 9000)
  fi
  SM service create --name web --replicas 4 --init --stop-grace-period 5s --network chaosnet \
    --update-failure-action continue "${extra[@]}" "$("$HOSTS" registry)/busybox:1" sleep 3600 >/dev/null
  finals >"$DIR/initial.json" || { echo "the initial state could not be read" >&2; "$HOSTS" down >/dev/null 2>&1; return 1; }
  sampler "$DIR/hosts.jsonl" "$DIR/versions.jsonl" "$DIR/stop" &
  local sampler_pid=$!
  workload "$seconds" "$DIR/ops.jsonl" &
  local workload_pid=$!
  sleep $((RUN_SECONDS / 4))
  local t_fault; t_fault=$(now_ms)
  if [ "$faults" = soak ]; then
    local until=$(( $(date +%s) + seconds - RUN_SECONDS / 2 )) f list=""
    # shellcheck disable=SC2206
    local pick=($SOAK_FAULTS)
    while [ "$(date +%s)" -lt "$until" ]; do
      f=${pick[$((RANDOM % ${#pick[@]}))]}
      "fault_$f"
      list="$list$f; "
      sleep 2
    done
    FAULT="random faults: $list"
  else
    "fault_$faults"
  fi
  local healed; healed=$(now_ms)
  wait "$workload_pid"
  took=$(converge) || { took="never"; verdict=1; }
  touch "$DIR/stop"
  wait "$sampler_pid" || true
  echo "== $name"
  echo "fault: $FAULT (healed $(( (healed - t_fault) / 1000 )) s after it began)"
  [ -f "$DIR/notes" ] && cat "$DIR/notes"
  [ -f "$DIR/problems" ] && { cat "$DIR/problems"; verdict=1; }
  if finals >"$DIR/finals.json"; then
    "$SHOAL_BIN_DIR/shoal-chaos" check --history "$DIR/ops.jsonl" --initial "$DIR/initial.json" \
      --finals "$DIR/finals.json" --versions "$DIR/versions.jsonl" --hosts "$DIR/hosts.jsonl" \
      --cut-offs "$DIR/cuts.jsonl" --grace-ms $GRACE_MS "${checks[@]}" | tee "$DIR/verdict" || verdict=1
    slot_story "$DIR/verdict" "$DIR/hosts.jsonl.tasks"
  else
    echo "the final state could not be read"; verdict=1
  fi
  echo "converged after healing: $took ms"
  crashes || verdict=1
  t=$(now_ms)
  if leaks "$DIR/footprint"; then echo "leaks: none (clean $(( $(now_ms) - t )) ms after removal)"; else verdict=1; fi
  swept
  [ "$verdict" = 0 ] && echo "result: pass" || echo "result: FAIL"
  REPORTED=1
  if [ "$verdict" != 0 ]; then
    for i in $(seq 1 $N_HOSTS); do cp "$W/h$i/shoald.log" "$DIR/host$i.log" 2>/dev/null || true; done
    echo "the record and the hosts' logs are kept in $DIR"
    KEEP_RECORD=1
  fi
  if [ "$verdict" != 0 ] && [ -n "${CHAOS_KEEP:-}" ]; then
    echo "hosts kept for a look (CHAOS_KEEP): SHOAL_HOSTS_DIR=$W SHOAL_HOSTS_SET=$SHOAL_HOSTS_SET deploy/hosts.sh down"
    KEPT=1
    return $verdict
  fi
  "$HOSTS" down >/dev/null 2>&1 || true
  return $verdict
}

# Each run is a process of its own, its steps under errexit (which a function called under
# `||` would lose): a step of a fault that fails ends the run as failed, saying so.
cleanup() {
  local rc=$?
  [ "$rc" = 0 ] || [ -n "${REPORTED:-}" ] || echo "result: FAIL (exit $rc; a step failed: see above)"
  # shellcheck disable=SC2046
  kill $(jobs -p) 2>/dev/null || true
  [ -n "${KEPT:-}" ] || "$HOSTS" down >/dev/null 2>&1 || true
  [ -n "${KEEP_RECORD:-}" ] || rm -rf "$WORK"
}
case ${1:-} in
  --one)
    trap cleanup EXIT
    echo secret >"$WORK/secret"
    "$HOSTS" down >/dev/null 2>&1 || true
    if [ "$2" = soak ]; then run soak soak "$3"; else run "$2" "$2" "$RUN_SECONDS"; fi
    exit 0 ;;
  --soak)
    case ${2:-} in ''|*[!0-9]*) echo "--soak needs a number of minutes" >&2; exit 2 ;; esac
    rm -rf "$WORK"
    exec bash "$0" --one soak $(( $2 * 60 + RUN_SECONDS )) ;;
esac
rm -rf "$WORK"
for s in ${*:-$ALL}; do
  case " $ALL " in *" $s "*) ;; *) echo "unknown scenario $s (one of: $ALL)" >&2; exit 2 ;; esac
done
failed=0
for s in ${*:-$ALL}; do
  bash "$0" --one "$s" || failed=1
done
exit $failed
