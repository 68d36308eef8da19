#!/usr/bin/env bash
# The newcomer's second command: installs what is missing, builds simq with warnings as
# errors, checks formatting, and runs every test (unit; integration: real redis-server, real
# ZeroMQ sockets on loopback; chaos: killing workers, brokers and Redis mid-sweep). `--sanitize` does it all again under
# AddressSanitizer + UndefinedBehaviorSanitizer in build-asan/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh

build=build
flags=(-DSIMQ_WERROR=ON -DSIMQ_BUILD_TESTS=ON)
if [ "${1:-}" = "--sanitize" ]; then
  build=build-asan
  flags+=(-DSIMQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # The chaos suite's 10^6-job flood at a tenth of its size: sanitized code is ~5x slower,
  # and the flood's point (bounded memory under back-pressure) holds at 10^5.
  export SIMQ_CHAOS_SCALE=0.1
fi

./scripts/format.sh --check
./scripts/build.sh "$build" "${flags[@]}"
# Redis and the simq processes must not come from the caller's environment.
unset SIMQ_REDIS SIMQ_BROKER SIMQ_BACKEND
ctest --test-dir "$build" --output-on-failure -j2 --timeout 600
