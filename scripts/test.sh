#!/usr/bin/env bash
# The newcomer's second command: installs what is missing, builds simq with warnings as
# errors, checks formatting, and runs every test (unit and integration: real redis-server,
# real ZeroMQ sockets on loopback). `--sanitize` does it all again under
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
fi

./scripts/format.sh --check
./scripts/build.sh "$build" "${flags[@]}"
# Redis and the simq processes must not come from the caller's environment.
unset SIMQ_REDIS SIMQ_BROKER SIMQ_BACKEND
ctest --test-dir "$build" --output-on-failure -j2 --timeout 600
