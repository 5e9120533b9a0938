#!/usr/bin/env bash
# Pod-to-pod throughput (iperf3 TCP) and latency (ping RTT) across two nodes, for each
# overlay backend run by `twill overlay`, next to the same path built by hand with `ip`
# (a raw kernel vxlan pair; plain routes) in the same run.
#
# Everything lives in namespaces this script creates (prefix twb$$-) on an underlay bridge
# inside its own namespace; nothing in the root namespace is touched. Needs root, iproute2,
# iperf3, ping, and a twill binary built with the overlay feature.
#
#   crates/overlay-agent/bench/iperf.sh [path/to/twill] [seconds] [rounds]
#
# The paths are measured in interleaved rounds (so a noisy neighbour hits all of them
# alike); each line is one measurement, the summary uses the median per path.
set -euo pipefail

TWILL=${1:-target/release/twill}
SECS=${2:-5}
ROUNDS=${3:-3}
P="twb$$"
DIR=$(mktemp -d)
declare -A BPS RTT

cleanup() {
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$DIR"
}
trap cleanup EXIT

# underlay + 2 nodes (eth0 192.168.50.1N/24) + a pod per node (veth, no address yet)
setup() {
  ip netns add "$P-ul"
  ip -n "$P-ul" link add br0 type bridge
  ip -n "$P-ul" link set br0 up
  for n in 1 2; do
    ip netns add "$P-n$n"; ip netns add "$P-p$n"
    ip -n "$P-n$n" link set lo up; ip -n "$P-p$n" link set lo up
    ip -n "$P-n$n" link add eth0 type veth peer name ul$n
    ip -n "$P-n$n" link set ul$n netns "$P-ul"
    ip -n "$P-ul" link set ul$n master br0 up
    ip -n "$P-n$n" addr add 192.168.50.1$n/24 dev eth0
    ip -n "$P-n$n" link set eth0 up
    ip -n "$P-p$n" link add eth0 type veth peer name vpod
    ip -n "$P-p$n" link set vpod netns "$P-n$n"
    ip -n "$P-n$n" link set vpod up; ip -n "$P-p$n" link set eth0 up
    ip netns exec "$P-n$n" sysctl -qw net.ipv4.ip_forward=1
  done
}

teardown() {
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  done
  rm -f "$DIR"/*
}

# wire_pod N SUBNET_THIRD_OCTET MTU
wire_pod() {
  local n=$1 o=$2 mtu=$3
  ip -n "$P-n$n" addr add 10.244.$o.1/24 dev vpod
  ip -n "$P-n$n" link set vpod mtu "$mtu"
  ip -n "$P-p$n" link set eth0 mtu "$mtu"
  ip -n "$P-p$n" addr add 10.244.$o.2/24 dev eth0
  ip -n "$P-p$n" route add default via 10.244.$o.1
}

measure() {
  local name=$1 dst=$2
  ip netns exec "$P-p2" iperf3 -s -1 -D >/dev/null 2>&1
  sleep 0.3
  ip netns exec "$P-p1" ping -c 3 -W 2 -q "$dst" >/dev/null  # warm ARP/FDB
  local bps rtt
  bps=$(ip netns exec "$P-p1" iperf3 -c "$dst" -t "$SECS" -J | \
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))')
  rtt=$(ip netns exec "$P-p1" ping -c 50 -i 0.02 -q "$dst" | awk -F/ '/rtt/ {print $5}')
  BPS[$name]="${BPS[$name]:-} $bps"
  RTT[$name]="${RTT[$name]:-} $rtt"
  printf '%-16s %8s Gbit/s   rtt avg %s ms\n' "$name" "$(python3 -c "print(f'{$bps/1e9:.2f}')")" "$rtt"
}

run_twill() {
  local backend=$1 mtu=$2
  setup
  echo "{\"Network\":\"10.244.0.0/16\",\"Backend\":{\"Type\":\"$backend\"}}" > "$DIR/net.json"
  for n in 1 2; do
    ip netns exec "$P-n$n" "$TWILL" overlay --config "$DIR/net.json" --store "embedded:$DIR/leases.json" \
      --iface eth0 --subnet-file "$DIR/n$n.env" --resync-secs 1 >"$DIR/n$n.log" 2>&1 &
  done
  for n in 1 2; do
    for _ in $(seq 100); do [ -s "$DIR/n$n.env" ] && break; sleep 0.1; done
    local o; o=$(sed -n 's/^FLANNEL_SUBNET=10\.244\.\([0-9]*\)\.1\/24$/\1/p' "$DIR/n$n.env")
    eval "O$n=$o"
    wire_pod "$n" "$o" "$mtu"
  done
  sleep 2
  measure "twill-$backend" "10.244.$O2.2"
  teardown
}

run_hand_vxlan() {
  setup
  for n in 1 2; do
    local me=1$n peer o po
    [ "$n" = 1 ] && { peer=12; o=1; po=2; } || { peer=11; o=2; po=1; }
    ip -n "$P-n$n" link add vx0 type vxlan id 42 local 192.168.50.$me dev eth0 dstport 8472 nolearning
    ip -n "$P-n$n" link set vx0 address 02:00:00:00:00:$me mtu 1450 up
    ip -n "$P-n$n" addr add 10.244.$o.0/32 dev vx0
    ip -n "$P-n$n" neigh add 10.244.$po.0 lladdr 02:00:00:00:00:$peer dev vx0 nud permanent
    ip netns exec "$P-n$n" bridge fdb add 02:00:00:00:00:$peer dev vx0 dst 192.168.50.$peer self permanent
    ip -n "$P-n$n" route add 10.244.$po.0/24 via 10.244.$po.0 dev vx0 onlink
    wire_pod "$n" "$o" 1450
  done
  measure "hand-vxlan" 10.244.2.2
  teardown
}

run_hand_routes() {
  setup
  ip -n "$P-n1" route add 10.244.2.0/24 via 192.168.50.12
  ip -n "$P-n2" route add 10.244.1.0/24 via 192.168.50.11
  wire_pod 1 1 1500; wire_pod 2 2 1500
  measure "hand-routes" 10.244.2.2
  teardown
}

echo "pod -> pod across two nodes, iperf3 ${SECS}s TCP, ping RTT (50 x 20 ms), $ROUNDS rounds"
for _ in $(seq "$ROUNDS"); do
  run_hand_vxlan
  run_twill vxlan 1450
  run_hand_routes
  run_twill host-gw 1500
  run_twill udp 1472
done

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
for k in hand-vxlan twill-vxlan hand-routes twill-host-gw twill-udp; do
  BPS[$k]=$(median "${BPS[$k]}"); RTT[$k]=$(median "${RTT[$k]}")
done
ratio() { python3 -c "print(f'{100*$1/$2:.1f}%')"; }
echo
echo "median:"
for k in hand-vxlan twill-vxlan hand-routes twill-host-gw twill-udp; do
  printf '  %-16s %8s Gbit/s   rtt %s ms\n' "$k" "$(python3 -c "print(f'{${BPS[$k]}/1e9:.2f}')")" "${RTT[$k]}"
done
echo "twill-vxlan / hand-vxlan:     $(ratio "${BPS[twill-vxlan]}" "${BPS[hand-vxlan]}")   (target >= 97%)"
echo "twill-host-gw / hand-routes:  $(ratio "${BPS[twill-host-gw]}" "${BPS[hand-routes]}")   (target >= 97%)"
echo "twill-udp / twill-vxlan:      $(ratio "${BPS[twill-udp]}" "${BPS[twill-vxlan]}")   (target >= 70%)"
