#!/usr/bin/env bash
# Load balancing through a service VIP and an ingress port: on 3 hosts, `web` (busybox httpd)
# behind its VIP and published on port 8080 of every node, and a client task on the same overlay.
# Prints requests/s and p99 latency through the VIP and straight to one task's address (their
# ratio is the VIP's overhead), through the ingress port of a node (from outside the cluster:
# the hosts' bridge; its ratio to the direct figure is the ingress overhead), then the failed
# requests of clients sending continuously through both while `web` scales 10 -> 2. Asserts
# nothing.
#   tests/bench/lb.sh [REQUESTS]   (default 5000; release binaries in SHOAL_BIN_DIR)
# The client is ab (apache2-utils) run in the client task's network namespace; every wait is
# bounded.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-5000}
export SHOAL_BIN_DIR=${SHOAL_BIN_DIR:-$ROOT/target/release}
export SHOAL_HOSTS_DIR=${SHOAL_HOSTS_DIR:-/var/tmp/shoal-bench-lb}
export SHOAL_HOSTS_SET=${SHOAL_HOSTS_SET:-7}
HOSTS="$ROOT/deploy/hosts.sh"
command -v ab >/dev/null || { echo "ab is missing: apt-get install apache2-utils" >&2; exit 1; }

S() { "$SHOAL_BIN_DIR/shoal" --host "$("$HOSTS" host 1)" "$@"; }
# Runs ab in the client task's network namespace.
ab_in() { timeout 300 nsenter -t "$CLIENT" -n ab "$@" 2>&1; }
rps() { awk '/^Requests per second:/ {print $4}'; }
p99() { awk '$1 == "99%" {print $2}'; }
# Connect, receive and exception failures and non-2xx answers (ab also counts answers whose length
# differs from the first one's as failed: the tasks' pages differ in length, so those are not).
failed() {
  awk '/\(Connect: / {gsub(/[(),]/, " "); for (i = 1; i <= NF; i++) if ($i == "Connect:" || $i == "Receive:" || $i == "Exceptions:") f += $(i + 1)}
       /^Non-2xx responses:/ {n = $3} END {print f + n}'
}
running() { S service ps "$1" --format json | python3 -c "import json,sys; print(sum(1 for t in json.load(sys.stdin) if t['state']=='running' and t['desired_state']=='running'))"; }
wait_running() {
  local deadline=$(( $(date +%s) + 120 ))
  until [ "$(running "$1")" = "$2" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$1 did not reach $2 running tasks in 120 s" >&2; return 1; }
    sleep 0.2
  done
}

trap '"$HOSTS" down >/dev/null 2>&1 || true' EXIT
"$HOSTS" down >/dev/null 2>&1 || true
"$HOSTS" up 3 0 >/dev/null
image=$("$HOSTS" registry)/busybox:1
S network create net >/dev/null
S service create --name web --replicas 3 --network net -p 8080:80 "$image" \
  sh -c 'mkdir -p /www && echo "hello from $(hostname)" >/www/index.html && exec httpd -f -p 80 -h /www' >/dev/null
S service create --name client --network net "$image" sleep 3600 >/dev/null
wait_running web 3
wait_running client 1
CLIENT=$(S service ps client --format json | python3 -c "import json,sys; print([t['pid'] for t in json.load(sys.stdin) if t['state']=='running'][0])")
VIP=$(S service inspect web --format json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['virtual_ips'][0]['address'].split('/')[0])")
TASK=$(S service ps web --format json | python3 -c "import json,sys; print([t['networks'][0]['address'].split('/')[0] for t in json.load(sys.stdin) if t['state']=='running'][0])")
# Until the client's VIP rules are in place.
for _ in $(seq 1 100); do timeout 2 nsenter -t "$CLIENT" -n busybox wget -q -O /dev/null "http://$VIP/" 2>/dev/null && break; sleep 0.1; done

vip=$(ab_in -q -n "$N" -c 8 "http://$VIP/")
direct=$(ab_in -q -n "$N" -c 8 "http://$TASK/")
echo "lb_vip_requests_per_second: $(echo "$vip" | rps) req/s"
echo "lb_vip_p99: $(echo "$vip" | p99) ms"
echo "lb_direct_requests_per_second: $(echo "$direct" | rps) req/s"
echo "lb_direct_p99: $(echo "$direct" | p99) ms"
echo "lb_vip_overhead: $(python3 -c "print(round($(echo "$direct" | rps) / $(echo "$vip" | rps), 3))") x"
NODE="10.232.$SHOAL_HOSTS_SET.1"  # host 1 (deploy/hosts.sh: host I of set K is 10.232.K.I)
for _ in $(seq 1 100); do timeout 2 busybox wget -q -O /dev/null "http://$NODE:8080/" 2>/dev/null && break; sleep 0.1; done
ingress=$(timeout 300 ab -q -n "$N" -c 8 "http://$NODE:8080/" 2>&1)
echo "lb_ingress_requests_per_second: $(echo "$ingress" | rps) req/s"
echo "lb_ingress_p99: $(echo "$ingress" | p99) ms"
echo "lb_ingress_overhead: $(python3 -c "print(round($(echo "$direct" | rps) / $(echo "$ingress" | rps), 3))") x"

# Failed requests while scaling 10 -> 2 under a continuous load.
S service scale web=10 >/dev/null
wait_running web 10
ab_in -q -r -s 5 -t 30 -n 1000000 -c 4 "http://$VIP/" >/tmp/shoal-lb-scale.$$ &
abpid=$!
timeout 300 ab -q -r -s 5 -t 30 -n 1000000 -c 4 "http://$NODE:8080/" >/tmp/shoal-lb-scale-ingress.$$ 2>&1 &
abpid2=$!
sleep 3
S service scale --detach web=2 >/dev/null
wait_running web 2
wait "$abpid" || true
wait "$abpid2" || true
scale=$(cat /tmp/shoal-lb-scale.$$)
scale_ingress=$(cat /tmp/shoal-lb-scale-ingress.$$)
rm -f /tmp/shoal-lb-scale.$$ /tmp/shoal-lb-scale-ingress.$$
echo "lb_requests_while_scaling_10_to_2: $(echo "$scale" | awk '/^Complete requests:/ {print $3}') requests"
echo "lb_failed_while_scaling_10_to_2: $(echo "$scale" | failed) requests"
echo "lb_ingress_requests_while_scaling_10_to_2: $(echo "$scale_ingress" | awk '/^Complete requests:/ {print $3}') requests"
echo "lb_ingress_failed_while_scaling_10_to_2: $(echo "$scale_ingress" | failed) requests"
