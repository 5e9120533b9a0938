#!/usr/bin/env bash
# NetworkPolicy flow log benchmark (issue 24), in a 2-node lab with real agents:
#
# 1. Cost on connection rate: TCP connections per second from an allowed pod (node-1)
#    to a pod behind a NetworkPolicy (node-2), with the flow log off, drops only, and
#    every decision, ROUNDS rounds each, alternating, same run.
# 2. A flood: 100k (FLOOD) SYNs from a refused pod at the guarded pod, with random
#    source ports (each a new connection attempt). Reports the node's NetworkPolicy
#    agent's RSS before and after, what the kernel copied and what the agent kept or
#    counted as lost, and whether the allowed pod still connects during the flood.
#
#   scripts/bench-flow-log.sh [ROUNDS]     (root; uses target/release/twill, or $TWILL)
#
# Every namespace is prefixed `tl-tflog-` and removed at the end, also on failure.
# Traffic goes only between the lab's own namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECS=${SECS:-5}
FLOOD=${FLOOD:-100000}
TWILL=${TWILL:-$PWD/target/release/twill}
[ -x "$TWILL" ] || cargo build --release --quiet -p twill
export TWILL_LAB_ROOT=${TWILL_LAB_ROOT:-/run/twill-lab-bench}
WORK=$(mktemp -d)
LAB=tflog
cleanup() {
  "$TWILL" lab down --name $LAB >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/cluster.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec:
  nodeName: node-2
  containers: [{name: db, image: serve_hostname, ports: [{containerPort: 5432}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: c, image: busybox, command: [sleep, infinity]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{protocol: TCP, port: 5432}]
YAML

# Connections per second for SECS seconds: connect, close, next.
cat >"$WORK/rate.py" <<'PY'
import socket, sys, time
host, secs = sys.argv[1], float(sys.argv[2])
n, end = 0, time.monotonic() + secs
while time.monotonic() < end:
    s = socket.create_connection((host, 5432), timeout=2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    n += 1
print(f"{n / secs:.0f}")
PY

# SYNs from random source ports through a raw socket (the kernel fills the IP header).
cat >"$WORK/flood.py" <<'PY'
import random, socket, struct, sys
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
for i in range(count):
    sport = 1024 + (i % 64000)
    seq = random.getrandbits(32)
    h = struct.pack("!HHIIBBHHH", sport, 5432, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    h = h[:16] + struct.pack("!H", csum(pseudo + h)) + h[18:]
    s.sendto(h, (dst, 0))
PY

relab() {
  "$TWILL" lab down --name $LAB >/dev/null 2>&1 || true
  "$TWILL" lab up --name $LAB --nodes 2 --no-client --no-dns --flow-log "$1" -f "$WORK/cluster.yaml" >/dev/null
  DB=$("$TWILL" lab get pods --name $LAB -n shop -o wide | awk '$1=="db"{print $6}')
  CLIENT=$("$TWILL" lab get pods --name $LAB -n shop -o wide | awk '$1=="client"{print $6}')
  sleep 1
}
rate() { "$TWILL" lab exec --name $LAB -n shop api -- python3 "$WORK/rate.py" "$DB" "$SECS"; }

echo "== connections per second, api (node-1) -> db (node-2, behind a NetworkPolicy), ${SECS}s each"
declare -A RATES
for r in $(seq 1 "$ROUNDS"); do
  for mode in off drops all; do
    relab $mode
    v=$(rate)
    RATES[$mode]="${RATES[$mode]:-} $v"
    echo "round $r: flow log $mode: $v/s"
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for mode in off drops all; do
  echo "flow log $mode: median $(echo "${RATES[$mode]}" | median)/s (runs:${RATES[$mode]})"
done

cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
metric() {
  "$TWILL" lab exec --name $LAB --node node-2 -- curl -s http://127.0.0.1:10255/metrics |
    awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'
}
for mode in off drops; do
  echo "== flood: $FLOOD SYNs from shop/client at shop/db:5432 (refused), flow log $mode"
  relab $mode
  PID=$(cat "$TWILL_LAB_ROOT/$LAB/nodes/node-2/netpol.pid")
  BEFORE=$(awk '/VmRSS/{print $2}' "/proc/$PID/status")
  CPU0=$(cpu)
  start=$(date +%s%N)
  "$TWILL" lab exec --name $LAB -n shop client -- python3 "$WORK/flood.py" "$CLIENT" "$DB" "$FLOOD" &
  FLOODER=$!
  # The allowed pod during the flood: connections per second while it runs.
  DURING=$(rate)
  wait $FLOODER
  took=$(( ($(date +%s%N) - start) / 1000000 ))
  sleep 1
  AFTER=$(awk '/VmRSS/{print $2}' "/proc/$PID/status")
  CPU=$(( $(cpu) - CPU0 ))
  DENIED=$(ip netns exec tl-$LAB-node-2 iptables -L TWILL-NP-DENY -v -n -x | awk 'NR > 2 {s += $1} END {print s + 0}')
  echo "flood sent in ${took} ms; the deny chain saw $DENIED packets"
  if [ $mode = drops ]; then
    KEPT=$("$TWILL" lab flows --name $LAB --verdict dropped -o json | wc -l)
    COPIED=$(ip netns exec tl-$LAB-node-2 iptables -L -v -n -x | awk '/NFLOG/ && /drop ingress/ {s += $1} END {print s + 0}')
    echo "kernel copies to the agent: $COPIED (rate limit 100/s, burst 200); records kept: $KEPT; counted: $(metric 'twill_netpol_flows_total{verdict="dropped"') dropped, $(metric twill_netpol_flows_lost_total) lost"
  fi
  echo "policy agent: RSS ${BEFORE} kB before, ${AFTER} kB after; CPU during the flood: $CPU ticks ($(getconf CLK_TCK)/s)"
  echo "allowed pod during the flood: $DURING connections/s"
done
