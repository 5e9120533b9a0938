#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (privileged ones
# in network namespaces the tests create), then every conformance corpus in
# ../shared/testdata. Run as root; as another user the privileged tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

export CARGO_TERM_COLOR=never
# Privileged tests may not skip where we are root (as in CI).
if [[ $(id -u) -eq 0 ]]; then export TWILL_REQUIRE_ROOT=1; fi
SHARED=${TWILL_SHARED_DIR:-$(cd .. && pwd)/shared}
export TWILL_SHARED_DIR=$SHARED

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build"
cargo build --workspace --quiet
export TWILL_BIN=$PWD/target/debug/twill

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
for area in cni overlay proxy dns netpol; do
  dir=$SHARED/testdata/$area
  [[ -d $dir ]] || continue
  if "$TWILL_BIN" conformance --help 2>/dev/null | grep -qE "^  $area "; then
    echo "== twill conformance $area $dir"
    "$TWILL_BIN" conformance "$area" "$dir" 2>&1 | tee -a "$log" || status=1
  fi
done
# The project's own cases in the shared schemas (upstream suites translated into data).
for dir in crates/conformance/cases/cluster-network-policy; do
  echo "== twill conformance netpol $dir"
  "$TWILL_BIN" conformance netpol "$dir" 2>&1 | tee -a "$log" || status=1
done
# The proxy corpus again for the other modes (iptables ran above).
for mode in nftables userspace ipvs; do
  if "$TWILL_BIN" conformance proxy --help 2>/dev/null | grep -q "$mode"; then
    echo "== twill conformance proxy --mode $mode $SHARED/testdata/proxy"
    "$TWILL_BIN" conformance proxy --mode "$mode" "$SHARED/testdata/proxy" 2>&1 | tee -a "$log" || status=1
  fi
done

echo "== cargo test"
cargo test --workspace --lib --bins --tests 2>&1 | tee -a "$log" || status=1

# One closing line over everything above: cargo's per-binary results and the
# conformance runners' summaries.
python3 - "$log" <<'PY'
import re, sys
passed = failed = 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed", line)
    if not m:
        m = re.match(r"(\d+) passed, (\d+) failed", line.strip())
    if m:
        passed += int(m.group(1)); failed += int(m.group(2))
print(f"total: {passed} passed, {failed} failed")
PY
exit $status
