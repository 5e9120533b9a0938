#!/usr/bin/env bash
# Installs what Twill's build, demo and tests need on a fresh Debian machine.
# Idempotent: packages already present are left as they are. Sourced by demo.sh and
# test.sh; run it alone to prepare a machine.
set -euo pipefail

PACKAGES=(
  iproute2 iptables nftables ipset conntrack kmod procps iputils-ping util-linux
  etcd-server containernetworking-plugins
  bind9-dnsutils knot dnsperf iperf3 curl
  protobuf-compiler
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo (Rust 1.89 or newer) is required; install it with rustup" >&2
  exit 1
fi
