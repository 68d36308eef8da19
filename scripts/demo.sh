#!/usr/bin/env bash
# The newcomer's first command: installs what is missing, builds simq, and runs the demo
# sweep (examples/demo.toml: Monte Carlo estimates of pi) on an embedded local cluster —
# its own redis-server, a broker and two workers — then prints the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh build -DSIMQ_BUILD_TESTS=OFF
echo
exec build/bin/simq run "${1:-examples/demo.toml}" --workers 2
