#!/usr/bin/env bash
# Memory of the `twill proxy` daemon (issue 6): N ClusterIP Services × 10 endpoints
# from one manifest file (scripts/gen-services.py), iptables mode on the
# legacy backend, in a network namespace of its own. Prints, once the first (full)
# sync is done and the heap trimmed: VmRSS split into anonymous memory and mapped
# binary pages, and the peak (VmHWM, reached while loading and syncing).
#
#   scripts/bench-proxy-memory.sh [N...]     (root; default 1000 10000; uses target/release/twill)
#
# The namespace is `tpm-<pid>` and is removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
TWILL=${TWILL:-$PWD/target/release/twill}
[ -x "$TWILL" ] || cargo build --release --quiet -p twill
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000 10000)
NS=tpm-$$
WORK=$(mktemp -d)
PID=

cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/status"; }

echo "| services | VmRSS | anonymous | binary pages | peak (VmHWM) | first sync |"
echo "|---|---|---|---|---|---|"
for n in "${SIZES[@]}"; do
  python3 scripts/gen-services.py "$n" > "$WORK/svc.yaml"
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  start=$(date +%s%N)
  ip netns exec "$NS" "$TWILL" proxy -f "$WORK/svc.yaml" --hostname-override n0 \
    --iptables-backend legacy --sync-period 1h \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 \
    2>"$WORK/proxy.log" &
  PID=$!
  # Synced when the full-sync histogram has its first sample.
  until ip netns exec "$NS" curl -sf http://127.0.0.1:10249/metrics 2>/dev/null |
      grep -q '^kubeproxy_sync_full_proxy_rules_duration_seconds_count 1'; do
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/proxy.log"; exit 1; }
    sleep 0.2
  done
  synced=$(( ($(date +%s%N) - start) / 1000000 ))
  sleep 2 # the trim after the sync
  printf '| %s | %s MB | %s MB | %s MB | %s MB | %s ms |\n' "$n" \
    "$(( $(kb VmRSS) / 1024 ))" "$(( $(kb RssAnon) / 1024 ))" \
    "$(( $(kb RssFile) / 1024 ))" "$(( $(kb VmHWM) / 1024 ))" "$synced"
  kill "$PID"; wait "$PID" 2>/dev/null || true
  PID=
  ip netns del "$NS"
done
