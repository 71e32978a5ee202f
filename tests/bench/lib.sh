# Helpers the benchmark scripts share (sourced, not run). Every wait is bounded.

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { python3 -c "print(f'{$1 / 1000:.1f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }

# Polls `$@` (prints a number) until it is at least $1, within $2 seconds.
wait_for() {
  local want=$1 limit=$2; shift 2
  local deadline=$(( $(date +%s) + limit )) got
  while :; do
    got=$("$@" 2>/dev/null || echo 0)
    [ "$got" -ge "$want" ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || { echo "gave up after $limit s: $got of $want" >&2; return 1; }
    sleep 0.1
  done
}

# Polls `$@` (prints an update state) until it prints "completed", within $1 seconds; an update
# that paused or rolled back is an error.
wait_completed() {
  local limit=$1; shift
  local deadline=$(( $(date +%s) + limit )) state
  while :; do
    state=$("$@" 2>/dev/null || true)
    case "$state" in
      completed) return 0 ;;
      paused | rollback_*) echo "the update ended $state" >&2; return 1 ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || { echo "the update did not complete within $limit s ($state)" >&2; return 1; }
    sleep 0.1
  done
}

# Makes sure the Swarm side can run: the swarm-local script ($SWARM_LOCAL) and dockerd (installs
# docker.io when missing; the package's own dockerd is stopped, so it does not compete).
swarm_ready() {
  [ -x "$SWARM_LOCAL" ] || { echo "no $SWARM_LOCAL: set SWARM_LOCAL" >&2; exit 1; }
  if ! command -v dockerd >/dev/null; then
    echo "installing docker.io for the Swarm side ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io >/dev/null
  fi
  systemctl stop docker.service docker.socket >/dev/null 2>&1 || true
}
