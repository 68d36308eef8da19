#!/usr/bin/env bash
# Installs everything simq's build, tests and demo need from Debian packages.
# Idempotent: installs only what is missing; safe to run again.
# Usage: scripts/install-deps.sh [--bench]
#   --bench: also what the benchmark's extras need (scripts/bench.sh): gnuplot for the scaling
#            PNG, and Celery, Dask distributed and RQ for `bench.sh --peers`. Not needed to
#            build, test or run simq.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  cppzmq-dev libzmq3-dev libmsgpack-cxx-dev libhiredis-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev libtomlplusplus-dev libspdlog-dev
  redis-server redis-tools clang-format
  ngspice  # the exec kernel's example and test (examples/rc_ngspice.toml)
  python3  # the exec kernel's memory-limit test
)
if [ "${1:-}" = "--bench" ]; then
  packages+=(gnuplot-nox python3-celery python3-distributed python3-rq python3-redis)
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--bench]" >&2
  exit 2
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo $0) to install them" >&2
  exit 2
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian redis-server package starts a system service; simq never uses it.
# It starts its own redis-server on a free loopback port in a temp dir.
