#!/usr/bin/env bash
# Configures and builds simq into a build folder. Usage: scripts/build.sh [BUILD_DIR] [cmake args...]
# Used by demo.sh and test.sh; parallel to the machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$build" -j"$(nproc)"
