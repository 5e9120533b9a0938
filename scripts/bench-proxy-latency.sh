#!/usr/bin/env bash
# Time from a manifest write to the rule in the kernel (issue 18): `twill proxy -f FILE`
# with N ClusterIP Services × 10 endpoints (scripts/gen-services.py),
# iptables mode on the legacy backend, default sync periods (min 1 s, resync 1 h), in a
# network namespace of its own. Each round moves one endpoint of one Service (the file
# replaced by rename, as an editor or a controller writes it) and reads the daemon's
# `kubeproxy_network_programming_duration_seconds`: from the file's mtime to the end of
# the restore that carried the change (both binaries measure it that way), after
# checking the new endpoint's KUBE-SEP chain is in the kernel. Also measures the
# backend's own floor at that size: a one-chain `iptables-restore --noflush` into the
# same table.
#
#   scripts/bench-proxy-latency.sh [TWILL [TWILL_B]]   (root; env N=1000 ROUNDS=15)
#
# With two binaries they run one after the other on the same manifests (for a before
# and after). The namespace is `tpl-<pid>` and is removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
ROUNDS=${ROUNDS:-15}
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$PWD/target/release/twill")
NS=tpl-$$
WORK=$(mktemp -d)
PID=

cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
# The network programming histogram's sum and count, from inside the namespace.
npl() {
  ip netns exec "$NS" curl -sf http://127.0.0.1:10249/metrics |
    awk '/^kubeproxy_network_programming_duration_seconds_(sum|count) / { printf "%s ", $2 }'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

python3 scripts/gen-services.py "$N" > "$WORK/base.yaml"
echo "| binary | services | floor: 1-chain restore (median) | write → rule in kernel: median | min | max |"
echo "|---|---|---|---|---|---|"
for TWILL in "${BINS[@]}"; do
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  cp "$WORK/base.yaml" "$WORK/svc.yaml"
  ip netns exec "$NS" "$TWILL" proxy -f "$WORK/svc.yaml" --hostname-override n0 \
    --iptables-backend legacy --sync-period 1h \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 \
    2>"$WORK/proxy.log" &
  PID=$!
  until ip netns exec "$NS" curl -sf http://127.0.0.1:10249/metrics 2>/dev/null |
      grep -q '^kubeproxy_sync_full_proxy_rules_duration_seconds_count 1'; do
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/proxy.log"; exit 1; }
    sleep 0.2
  done
  floors=()
  for _ in 1 2 3 4 5; do
    t0=$(now_ms)
    printf '*nat\n:KUBE-BENCH-FLOOR - [0:0]\nCOMMIT\n' |
      ip netns exec "$NS" iptables-legacy-restore --noflush -w 5
    floors+=($(( $(now_ms) - t0 )))
  done
  ip netns exec "$NS" iptables-legacy -t nat -X KUBE-BENCH-FLOOR
  lat=()
  for r in $(seq 1 "$ROUNDS"); do
    ip=10.250.0.$r
    sed "0,/addresses: \[10.0.0.0\]/s//addresses: [$ip]/" "$WORK/base.yaml" > "$WORK/round.yaml"
    chain=$("$TWILL" proxy rules -f "$WORK/round.yaml" --node n0 |
      awk -v d="--to-destination $ip:8080" 'index($0, d) && !done { print $2; done = 1 }')
    [ -n "$chain" ] || { echo "no KUBE-SEP chain for $ip" >&2; exit 1; }
    sleep 2 # past the minimum sync interval, as a change that comes alone
    read -r sum0 count0 <<<"$(npl)"
    touch "$WORK/round.yaml" # the write is now (mtime), then the rename
    mv "$WORK/round.yaml" "$WORK/svc.yaml"
    until read -r sum1 count1 <<<"$(npl)" && [ "${count1%.*}" -gt "${count0%.*}" ]; do sleep 0.05; done
    ip netns exec "$NS" iptables-legacy -t nat -S "$chain" >/dev/null
    lat+=("$(awk -v a="$sum0" -v b="$sum1" 'BEGIN { printf "%d", (b - a) * 1000 }')")
  done
  sorted=$(printf '%s\n' "${lat[@]}" | sort -n)
  printf '| %s | %s | %s ms | %s ms | %s ms | %s ms |\n' "$(basename "$(dirname "$(dirname "$TWILL")")")/$(basename "$TWILL")" "$N" \
    "$(printf '%s\n' "${floors[@]}" | median)" "$(printf '%s\n' "${lat[@]}" | median)" \
    "$(head -1 <<<"$sorted")" "$(tail -1 <<<"$sorted")"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  PID=
  ip netns del "$NS"
done
