#!/usr/bin/env bash
# Fault scenarios on network-namespace hosts (3 managers + 2 workers, deploy/hosts.sh set 10,
# real containerd): a workload writes to the cluster while a fault is injected and healed, every
# write recorded with its outcome and times; the hosts' containers are sampled throughout; at the
# end the checker (`shoal-chaos check`) judges the record against the cluster's final state.
#   chaos/run.sh [SCENARIO ...]     (default: every scenario; debug binaries in SHOAL_BIN_DIR)
# Scenarios: leader-kill (kill -9 of the leader under write load), follower-kill, worker-kill
# (a worker with live containers: replaced elsewhere, no duplicate when it returns).
# Each prints the fault, the operations acknowledged / failed / unknown, the verdict and the time
# to converge after healing; the script exits non-zero if any verdict is not pass.
# Needs root. Every wait is bounded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/debug}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-chaos}
export SHOAL_HOSTS_SET=${SHOAL_HOSTS_SET:-10}
HOSTS="$ROOT/deploy/hosts.sh"
WORK=$(mktemp -d)
SECONDS_PER_RUN=${CHAOS_SECONDS:-24}
SCENARIOS=${*:-leader-kill follower-kill worker-kill}
NET=10.232.$SHOAL_HOSTS_SET

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
S() { timeout 15 "$SHOAL_BIN_DIR/shoal" --host "$("$HOSTS" host "$1")" "${@:2}"; }

# The host number (1-3) of the current leader, from any manager that answers.
leader() {
  local i addr
  for i in 1 2 3; do
    addr=$(S "$i" info --format json 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['raft']['leader_addr'])" 2>/dev/null) || continue
    [ -n "$addr" ] || continue
    echo "${addr%%:*}" | awk -F. '{print $4}'
    return 0
  done
  return 1
}

# Writes for $1 seconds, each to a random manager, recording one JSON line per write in $2.
# Objects: service/web#replicas (scale) and service/web#V (an environment variable).
workload() {
  local until=$(( $(date +%s) + $1 )) out=$2 n=0 i obj value args t0 t1 rc err outcome
  while [ "$(date +%s)" -lt "$until" ]; do
    n=$((n + 1))
    i=$(( RANDOM % 3 + 1 ))
    if [ $((n % 2)) = 0 ]; then
      obj="service/web#replicas"; value=$(( RANDOM % 4 + 2 )); args=(service scale --detach "web=$value")
    else
      obj="service/web#V"; value=$n; args=(service update --detach --env-add "V=$value" web)
    fi
    t0=$(now_ms)
    set +e
    err=$(S "$i" "${args[@]}" 2>&1 >/dev/null)
    rc=$?
    set -e
    t1=$(now_ms)
    # 0: acknowledged. 3: the daemon says it may or may not have happened; a timeout or a
    # connection lost mid-call is the same. Anything else the daemon refused.
    case $rc in
      0) outcome=ok ;;
      3 | 124) outcome=unknown ;;
      *) if grep -q "cannot reach shoald" <<<"$err" && ! grep -q "No such file\|Connection refused" <<<"$err"; then outcome=unknown; else outcome=failed; fi ;;
    esac
    printf '{"object":"%s","value":"%s","start_ms":%s,"end_ms":%s,"outcome":"%s"}\n' "$obj" "$value" "$t0" "$t1" "$outcome" >>"$out"
    sleep 0.2
  done
}

# Samples every host's running containers of `web` until the file $2 exists, as JSON lines in $1.
sampler() {
  local out=$1 stop=$2 i ids map
  for _ in $(seq 1 2000); do
    [ -e "$stop" ] && return 0
    map=$(for i in 1 2 3; do S "$i" service ps web --format json 2>/dev/null && break; done) || true
    [ -n "$map" ] || { sleep 0.5; continue; }
    ids=$(for i in 1 2 3 4 5; do
      ns=shoal$SHOAL_HOSTS_SET-h$i
      ctr --address "$SHOAL_HOSTS_DIR/containerd/containerd.sock" -n "$ns" tasks ls 2>/dev/null | awk -v h="host$i" 'NR > 1 && $3 == "RUNNING" {print h, $1}'
    done)
    python3 - "$(now_ms)" "$map" "$ids" >>"$out" <<'PY'
import json, sys
at, tasks, ids = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3].split("\n")
slot = {t["id"]: t["slot"] for t in tasks}
running = []
for line in ids:
    if not line.strip():
        continue
    host, cid = line.split()
    if cid in slot:
        running.append({"service": "web", "slot": slot[cid], "host": host})
print(json.dumps({"at_ms": at, "running": running}))
PY
    sleep 0.5
  done
}

# Waits (up to 90 s) until `web` runs as many tasks as it wants; prints the ms it took.
converge() {
  local t0 deadline=$(( $(date +%s) + 90 )) i v
  t0=$(now_ms)
  while [ "$(date +%s)" -lt "$deadline" ]; do
    for i in 1 2 3; do
      v=$(S "$i" service ls --format json 2>/dev/null | python3 -c "import json,sys; s=[x for x in json.load(sys.stdin) if x['name']=='web'][0]; print(1 if s['running']==s['replicas'] and s['update_state'] in ('', 'completed') else 0)" 2>/dev/null) && break
    done
    if [ "${v:-0}" = 1 ]; then echo $(( $(now_ms) - t0 )); return 0; fi
    sleep 0.5
  done
  echo "web did not converge within 90 s: $(S 1 service ls --format json 2>&1 | tr -d '\n' | head -c 600)" >&2
  S 1 service ps web >&2 2>&1 || true
  return 1
}

# The final values of the workload's objects, as JSON.
finals() {
  local i
  for i in 1 2 3; do
    S "$i" service inspect web --format json 2>/dev/null | python3 -c "
import json, sys
s = json.load(sys.stdin)[0]['spec']
env = dict(e.split('=', 1) for e in s['task_template']['container'].get('env', []))
out = {'service/web#replicas': str(s['replicated']['replicas'])}
if 'V' in env:
    out['service/web#V'] = env['V']
print(json.dumps(out))" && return 0
  done
  return 1
}

scenario() {
  local name=$1 dir=$WORK/$1 victim fault heal_at cut_host
  mkdir -p "$dir"
  "$HOSTS" up 3 2 >/dev/null
  S 1 service create --name web --replicas 4 --init --stop-grace-period 5s \
    "$("$HOSTS" registry)/busybox:1" sleep 3600 >/dev/null
  finals >"$dir/initial.json"
  sampler "$dir/hosts.jsonl" "$dir/stop" &
  local sampler_pid=$!
  workload "$SECONDS_PER_RUN" "$dir/ops.jsonl" &
  local workload_pid=$!
  sleep $((SECONDS_PER_RUN / 4))
  case $name in
    leader-kill) victim=$(leader) ;;
    follower-kill) victim=$(( $(leader) % 3 + 1 )) ;;
    worker-kill) victim=4 ;;
  esac
  fault="kill -9 of host$victim ($name)"
  local cut_from; cut_from=$(now_ms)
  kill -9 "$(cat "$SHOAL_HOSTS_DIR/h$victim/pid")"
  # A killed node's containers keep running until its agent is back (tasks run on managers
  # too): the cluster replaces them meanwhile, so they are excused while it is away (a cut-off
  # host) and for a grace after, by which its agent must have stopped them.
  cut_host=host$victim
  sleep $((SECONDS_PER_RUN / 2))
  "$HOSTS" start "$victim" >/dev/null
  "$HOSTS" wait-ready "$victim" >/dev/null || true
  heal_at=$(now_ms)
  wait "$workload_pid"
  local took verdict=0
  took=$(converge) || { took="never"; verdict=1; }
  touch "$dir/stop"
  wait "$sampler_pid" || true
  finals >"$dir/finals.json"
  : >"$dir/cuts.jsonl"
  printf '{"host":"%s","from_ms":%s,"to_ms":%s}\n' "$cut_host" "$cut_from" "$heal_at" >"$dir/cuts.jsonl"
  echo "== $name"
  echo "fault: $fault; healed after $(( (heal_at - cut_from) / 1000 )) s"
  "$SHOAL_BIN_DIR/shoal-chaos" check --history "$dir/ops.jsonl" --initial "$dir/initial.json" \
    --finals "$dir/finals.json" --hosts "$dir/hosts.jsonl" --cut-offs "$dir/cuts.jsonl" --grace-ms 15000 || verdict=1
  echo "converged after healing: $took ms"
  "$HOSTS" down >/dev/null 2>&1 || true
  return $verdict
}

cleanup() {
  "$HOSTS" down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"$HOSTS" down >/dev/null 2>&1 || true
failed=0
for s in $SCENARIOS; do
  case $s in
    leader-kill | follower-kill | worker-kill) scenario "$s" || failed=1 ;;
    *) echo "unknown scenario $s (leader-kill, follower-kill, worker-kill)" >&2; exit 2 ;;
  esac
done
exit $failed
