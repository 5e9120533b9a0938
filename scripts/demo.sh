#!/usr/bin/env bash
# The main job: build Twill and show what it makes of the example manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --quiet -p twill
echo "# twill cluster render -f examples/ --simulate-ips --lb-pool 192.168.0.240/28"
./target/release/twill cluster render -f examples/ --simulate-ips --lb-pool 192.168.0.240/28
