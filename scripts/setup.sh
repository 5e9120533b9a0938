#!/usr/bin/env bash
# Installs what Twill's build, demo and tests need on a fresh Debian machine: the one list
# of packages (deploy/Dockerfile installs its groups from here too).
# Idempotent: packages already present are left as they are. Sourced by demo.sh and
# test.sh (everything); run alone to prepare a machine, or with groups:
#   scripts/setup.sh [build] [runtime] [test]      # default: all three
#   scripts/setup.sh --list build                  # print a group's packages, install nothing
set -euo pipefail

# Building: etcd-client's build script runs protoc and needs the well-known .proto files
# (google/protobuf/*.proto), which are in libprotobuf-dev, not in protobuf-compiler.
TWILL_BUILD_PACKAGES=(protobuf-compiler libprotobuf-dev)
# Running: the kernel tools the appliers, the lab and doctor drive.
TWILL_RUNTIME_PACKAGES=(iproute2 iptables nftables ipset conntrack kmod procps iputils-ping util-linux ca-certificates)
# Testing and the demo: real peers (etcd, the reference CNI plugins, dig, knot, dnsperf,
# iperf3, curl), Python's Prometheus text parser, Graphviz's dot (it reads the pictures
# `-o dot` draws) and headless Chromium with its WebDriver (the browser tests of `lab ui`'s page).
TWILL_TEST_PACKAGES=(etcd-server containernetworking-plugins bind9-dnsutils knot dnsperf iperf3 curl python3-prometheus-client graphviz chromium chromium-driver)

twill_setup() {
  local list=0 groups=() pkgs=() missing=() p g
  for a in "$@"; do
    case $a in
      --list) list=1 ;;
      build | runtime | test) groups+=("$a") ;;
      *) echo "setup: unknown argument '$a' (groups: build runtime test; --list)" >&2; return 2 ;;
    esac
  done
  ((${#groups[@]})) || groups=(build runtime test)
  for g in "${groups[@]}"; do
    case $g in
      build) pkgs+=("${TWILL_BUILD_PACKAGES[@]}") ;;
      runtime) pkgs+=("${TWILL_RUNTIME_PACKAGES[@]}") ;;
      test) pkgs+=("${TWILL_TEST_PACKAGES[@]}") ;;
    esac
  done
  if ((list)); then
    echo "${pkgs[*]}"
    return 0
  fi
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
      echo "setup: need root to install: ${missing[*]}" >&2
      return 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [[ " ${groups[*]} " == *" build "* ]] && ! command -v cargo >/dev/null; then
    echo "setup: cargo (Rust 1.89 or newer) is required; install it with rustup" >&2
    return 1
  fi
}

# Sourced (demo.sh, test.sh): everything, whatever the caller's own arguments are.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  twill_setup "$@"
else
  twill_setup
fi
