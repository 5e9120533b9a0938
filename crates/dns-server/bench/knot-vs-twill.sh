#!/usr/bin/env bash
# Twill's cluster DNS against Knot DNS, same zone, same query mix, same run, loopback.
#
# usage: knot-vs-twill.sh [SERVICES] [SECONDS] [ROUNDS]
#   TWILL=path/to/twill (release build with the dns feature; default target/release/twill)
#   WORKERS=2 (UDP workers for both servers)
#
# Prints one line per (round, server) with QPS, loss and latency, then p99 latency at a
# fixed rate (from dnsperf -v) and Twill's RSS. Needs: knot (knotd), dnsperf, dig, python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
N=${1:-1000}
SECS=${2:-15}
ROUNDS=${3:-2}
WORKERS=${WORKERS:-2}
TWILL=${TWILL:-$root/target/release/twill}
dir=$(mktemp -d /tmp/twill-dnsbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
python3 "$here/gen_fixture.py" "$dir" "$N"
knot_port=$(free_port)
twill_port=$(free_port)
mkdir -p "$dir/knot"
cat > "$dir/knot.conf" <<CONF
server:
    rundir: "$dir/knot"
    listen: 127.0.0.1@$knot_port
    udp-workers: $WORKERS
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: error
database:
    storage: "$dir/knot"
zone:
  - domain: cluster.local
    file: "$dir/cluster.local.zone"
  - domain: 10.in-addr.arpa
    file: "$dir/10.in-addr.arpa.zone"
CONF
knotd -c "$dir/knot.conf" & pids+=($!)
"$TWILL" dns --zone cluster.local --reverse-zone 10.in-addr.arpa --listen "127.0.0.1:$twill_port" \
  -f "$dir/objects.json" --upstream 127.0.0.1:9 --no-loop-check --workers "$WORKERS" \
  --health 127.0.0.1:0 --ready 127.0.0.1:0 --metrics 127.0.0.1:0 2>/dev/null & twill_pid=$!
pids+=($twill_pid)

q=svc-1.bench-1.svc.cluster.local
for port in $knot_port $twill_port; do
  for _ in $(seq 50); do
    [ "$(dig @127.0.0.1 -p "$port" +short +time=1 +tries=1 $q A)" = "10.96.0.2" ] && break
    sleep 0.2
  done
done
for probe in "$q A" "_http._tcp.$q SRV" "2.0.96.10.in-addr.arpa PTR" "missing.bench-1.svc.cluster.local A"; do
  k=$(dig @127.0.0.1 -p "$knot_port" +short $probe | sort | tr '\n' ' ')
  t=$(dig @127.0.0.1 -p "$twill_port" +short $probe | sort | tr '\n' ' ')
  [ "$k" = "$t" ] || { echo "answers differ for $probe: knot [$k] twill [$t]" >&2; exit 1; }
done

run() { # name port -> "qps lost avg_ms"
  dnsperf -s 127.0.0.1 -p "$2" -d "$dir/queries.txt" -l "$SECS" -c 8 -q 256 2>&1 |
    awk -v name="$1" '/Queries sent:/{sent=$3} /Queries lost:/{lost=$3} /Queries per second:/{qps=$4}
      /Average Latency/{avg=$4} END{printf "%-6s qps=%.0f lost=%d/%d avg_latency_ms=%.3f\n", name, qps, lost, sent, avg*1000}'
}
echo "== $N services, query mix 60% A / 10% NXDOMAIN / 15% SRV / 15% PTR, ${SECS}s per run, $WORKERS workers each, $(nproc) CPUs shared with dnsperf"
for r in $(seq "$ROUNDS"); do
  echo "round $r: $(run knot "$knot_port")"
  echo "round $r: $(run twill "$twill_port")"
done

p99() { # name port rate
  dnsperf -s 127.0.0.1 -p "$2" -d "$dir/queries.txt" -l 5 -c 4 -Q "$3" -v 2>/dev/null |
    awk '$1==">" {print $NF}' | sort -g |
    awk -v name="$1" -v rate="$3" '{v[NR]=$1} END{ if (NR==0) {print name": no samples"; exit}
      i=int(NR*0.99); if (i<1) i=1; printf "%-6s p50=%.3fms p99=%.3fms at %d qps (%d samples)\n", name, v[int(NR/2)]*1000, v[i]*1000, rate, NR}'
}
echo "== latency at a fixed rate"
p99 knot "$knot_port" 20000
p99 twill "$twill_port" 20000
echo "== twill RSS with $N services: $(awk '/VmRSS/{print $2" "$3}' /proc/$twill_pid/status)"
