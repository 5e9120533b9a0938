#!/usr/bin/env bash
# Fuzz the query path for a bounded time (default 600 s). Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
exec cargo +nightly fuzz run query_path -- -max_total_time="${1:-600}" -max_len=1500
