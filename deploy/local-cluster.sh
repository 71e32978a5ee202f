#!/usr/bin/env bash
# A local cluster of shoald processes on loopback addresses 127.0.100.I:4242 (one data dir and
# control socket per node under $SHOAL_LOCAL_DIR, default /var/tmp/shoal-local).
#   deploy/local-cluster.sh up [MANAGERS [WORKERS]]   start, init and join (default 3 managers)
#   deploy/local-cluster.sh down                      stop every node and delete their data
#   deploy/local-cluster.sh host I                    print the --host value for node I
set -euo pipefail
W=${SHOAL_LOCAL_DIR:-/var/tmp/shoal-local}
BIN=${SHOAL_BIN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target/debug}
host() { echo "unix://$W/n$1/shoal.sock"; }
shoal() { local i=$1; shift; "$BIN/shoal" --host "$(host "$i")" "$@"; }
up() {
  local m=${1:-3} w=${2:-0} n
  n=$((m + w))
  [ -x "$BIN/shoald" ] || { echo "build first: cargo build --bins (or set SHOAL_BIN_DIR)" >&2; exit 1; }
  mkdir -p "$W"
  for i in $(seq 1 "$n"); do
    mkdir -p "$W/n$i"
    "$BIN/shoald" --data-dir "$W/n$i/data" --listen-addr "127.0.100.$i:4242" \
      --control-socket "$W/n$i/shoal.sock" --hostname "node$i" --no-runtime >"$W/n$i/shoald.log" 2>&1 &
    echo $! >"$W/n$i/pid"
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 100); do shoal "$i" info >/dev/null 2>&1 && break; sleep 0.1; done
  done
  shoal 1 cluster init >/dev/null
  local mt wt
  mt=$(shoal 1 cluster join-token -q manager)
  wt=$(shoal 1 cluster join-token -q worker)
  for i in $(seq 2 "$n"); do
    if [ "$i" -le "$m" ]; then tok=$mt; else tok=$wt; fi
    shoal "$i" cluster join --token "$tok" 127.0.100.1:4242 >/dev/null
  done
  for i in $(seq 1 "$n"); do echo "node$i: --host $(host "$i")  (log: $W/n$i/shoald.log)"; done
}
down() {
  for p in "$W"/n*/pid; do
    [ -f "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
  done
  sleep 1
  for p in "$W"/n*/pid; do
    [ -f "$p" ] || continue
    kill -9 "$(cat "$p")" 2>/dev/null || true
  done
  rm -rf "$W"
}
case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  host) host "$2" ;;
  *) sed -n '2,6p' "$0"; exit 2 ;;
esac
