#!/usr/bin/env bash
# Lab benchmark (issue 8): time from `twill lab up` to every pod Ready for 3 nodes and
# 10 pods, and teardown, next to the same steps done by hand with raw commands (ip
# netns, veth, a vxlan overlay, the reference CNI plugins, one listening process per
# pod) in the same run.
#
#   scripts/bench-lab.sh [ROUNDS]        (root; uses target/release/twill, or $TWILL)
#   NODES=20 PODS=200 scripts/bench-lab.sh 1
#
# After the last round's `lab up` with DNS it also reports the idle controller's CPU
# (10 s of utime+stime from /proc, as a share of one core).
#
# Every namespace is prefixed `tbl-` (raw) or `tl-tbench-` (twill) and removed at the
# end, also on failure. Nothing in the root namespace changes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
TWILL=${TWILL:-$PWD/target/release/twill}
CNI=/usr/lib/cni
[ -x "$TWILL" ] || cargo build --release --quiet -p twill
export TWILL_LAB_ROOT=${TWILL_LAB_ROOT:-/run/twill-lab-bench}
WORK=$(mktemp -d)
PODS=${PODS:-10}
NODES=${NODES:-3}

cleanup() {
  "$TWILL" lab down --name tbench >/dev/null 2>&1 || true
  raw_down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ms() { date +%s%N; }
elapsed() { echo $(( ($2 - $1) / 1000000 )); }

cat >"$WORK/bench.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: bench}
spec:
  replicas: $PODS
  selector: {matchLabels: {app: bench}}
  template:
    metadata: {labels: {app: bench}}
    spec:
      containers:
      - name: web
        image: nginx
        ports: [{containerPort: 80}]
YAML

# --- by hand -----------------------------------------------------------------------
raw_up() {
  ip netns add tbl-sw
  ip -n tbl-sw link add br0 type bridge
  ip -n tbl-sw link set br0 up
  for n in $(seq $NODES); do
    ns=tbl-n$n
    ip netns add $ns
    ip -n tbl-sw link add sw$n type veth peer name eth0 netns $ns
    ip -n tbl-sw link set sw$n master br0 up
    ip -n $ns addr add 192.168.77.1$n/24 dev eth0
    ip -n $ns link set eth0 up
    ip -n $ns link set lo up
    ip netns exec $ns sysctl -qw net.ipv4.ip_forward=1
    ip -n $ns link add flannel.1 type vxlan id 1 local 192.168.77.1$n dev eth0 dstport 8472 nolearning
    ip -n $ns addr add 10.250.$n.0/32 dev flannel.1
    ip -n $ns link set flannel.1 up
  done
  # Full mesh: route, neighbour and FDB entry per peer, as flannel's vxlan backend does.
  for n in $(seq $NODES); do
    for p in $(seq $NODES); do
      [ $n = $p ] && continue
      mac=$(ip -n tbl-n$p -j link show flannel.1 | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["address"])')
      ip -n tbl-n$n neigh add 10.250.$p.0 lladdr $mac dev flannel.1 nud permanent
      bridge -n tbl-n$n fdb add $mac dev flannel.1 dst 192.168.77.1$p
      ip -n tbl-n$n route add 10.250.$p.0/24 via 10.250.$p.0 dev flannel.1 onlink
    done
  done
  for i in $(seq 0 $((PODS - 1))); do
    n=$(( i % NODES + 1 ))
    pod=tbl-p$i
    ip netns add $pod
    conf="{\"cniVersion\":\"1.0.0\",\"name\":\"cbr0\",\"type\":\"bridge\",\"bridge\":\"cni0\",\"isGateway\":true,\"ipMasq\":false,\"ipam\":{\"type\":\"host-local\",\"subnet\":\"10.250.$n.0/24\",\"dataDir\":\"$WORK/ipam-$n\"}}"
    echo "$conf" | ip netns exec tbl-n$n env CNI_COMMAND=ADD CNI_CONTAINERID=raw$i \
      CNI_NETNS=/run/netns/$pod CNI_IFNAME=eth0 CNI_PATH=$CNI $CNI/bridge >/dev/null
    ip netns exec $pod "$TWILL" lab responder --pod $pod --namespace default --ports 80/TCP \
      >/dev/null 2>&1 &
    echo $! >>"$WORK/raw.pids"
  done
  # Ready: every pod's port listens (the lab's readiness rule).
  for i in $(seq 0 $((PODS - 1))); do
    until ip netns exec tbl-p$i ss -Hltn 'sport = :80' | grep -q LISTEN; do sleep 0.01; done
  done
}

raw_down() {
  [ -f "$WORK/raw.pids" ] && xargs -r kill <"$WORK/raw.pids" 2>/dev/null
  rm -f "$WORK/raw.pids"
  for ns in $(ip netns list | awk '/^tbl-/ {print $1}'); do ip netns del $ns; done
  rm -rf "$WORK"/ipam-*
}

echo "$NODES nodes, $PODS pods; $ROUNDS rounds; $(nproc) CPUs; $(uname -r)"
for r in $(seq "$ROUNDS"); do
  t0=$(ms); raw_up; t1=$(ms); raw_down; t2=$(ms)
  raw_upt=$(elapsed $t0 $t1); raw_downt=$(elapsed $t1 $t2)

  t0=$(ms)
  "$TWILL" lab up --name tbench --nodes $NODES --no-dns --replace -f "$WORK/bench.yaml" >"$WORK/up.txt"
  t1=$(ms)
  "$TWILL" lab down --name tbench >/dev/null
  t2=$(ms)
  ready=$(grep -o '[0-9]*/[0-9]* pods ready' "$WORK/up.txt" || true)
  tw_upt=$(elapsed $t0 $t1); tw_downt=$(elapsed $t1 $t2)

  t0=$(ms)
  "$TWILL" lab up --name tbench --nodes $NODES --replace -f "$WORK/bench.yaml" >"$WORK/up2.txt"
  t1=$(ms)
  if [ "$r" = "$ROUNDS" ]; then
    pid=$(cat "$TWILL_LAB_ROOT/tbench/controller.pid")
    c0=$(awk '{print $14+$15}' /proc/$pid/stat); sleep 10; c1=$(awk '{print $14+$15}' /proc/$pid/stat)
    idle="idle controller $(awk -v d=$((c1 - c0)) -v hz=$(getconf CLK_TCK) 'BEGIN {printf "%.1f", d / hz / 10 * 100}')% of a core"
  fi
  t1b=$(ms)
  "$TWILL" lab down --name tbench >/dev/null
  t2=$(ms); t2=$(( t2 - (t1b - t1) ))
  ready2=$(grep -o '[0-9]*/[0-9]* pods ready' "$WORK/up2.txt" || true)
  echo "round $r: raw up ${raw_upt} ms, down ${raw_downt} ms | twill lab (no DNS) up ${tw_upt} ms ($ready), down ${tw_downt} ms | twill lab with DNS up $(elapsed $t0 $t1) ms ($ready2), down $(elapsed $t1 $t2) ms"
done
echo "${idle:-}"
