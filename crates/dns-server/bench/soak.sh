#!/usr/bin/env bash
# 60 s (or $2) of dnsperf at full speed against Twill: loss and RSS every 10 s.
# usage: soak.sh [SERVICES] [SECONDS]   (TWILL=path/to/release/twill)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
N=${1:-10000}
SECS=${2:-60}
TWILL=${TWILL:-$root/target/release/twill}
dir=$(mktemp -d /tmp/twill-dnssoak.XXXXXX)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
python3 "$here/gen_fixture.py" "$dir" "$N" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$TWILL" dns --zone cluster.local --reverse-zone 10.in-addr.arpa --listen "127.0.0.1:$port" -f "$dir/objects.json" \
  --upstream 127.0.0.1:9 --no-loop-check --workers 2 --health 127.0.0.1:0 --ready 127.0.0.1:0 --metrics 127.0.0.1:0 2>/dev/null &
pid=$!
for _ in $(seq 100); do dig @127.0.0.1 -p "$port" +time=1 +tries=1 cluster.local SOA | grep -q NOERROR && break; sleep 0.2; done
rss() { awk '/VmRSS/{print $2" kB"}' /proc/$pid/status; }
echo "$N services; RSS at start: $(rss)"
dnsperf -s 127.0.0.1 -p "$port" -d "$dir/queries.txt" -l "$SECS" -c 8 -q 256 -S 10 2>&1 |
  while IFS= read -r line; do
    case "$line" in
      *"Queries per second"*|*"Queries lost"*|*"Queries sent"*) echo "$line" ;;
      [0-9]*:*) echo "$line qps; RSS $(rss)" ;;
    esac
  done
echo "RSS at end: $(rss)"
