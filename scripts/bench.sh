#!/usr/bin/env bash
# The benchmark of issue 4: installs what is missing, builds simq-bench (in build-bench/, or
# $SIMQ_BENCH_BUILD), runs it in the current directory and prints the table; writes
# bench-results.json and bench-scaling.png there (simq-bench --json/--png change that).
#
# Usage: scripts/bench.sh [--peers] [simq-bench args...]
#   --peers  first runs Celery, Dask distributed and RQ (Debian's python3-celery,
#            python3-distributed, python3-rq) on the same workloads — no-op throughput,
#            sequential round trips, python fib scaling over the same worker counts — with
#            bench/peers/run_peers.py, and prints their figures and simq's ratios in the same
#            table. Peer sizes: 20,000 no-op jobs for Celery and Dask, 2,000 for RQ (a fork per
#            job), 300 (RQ: 200) round trips, 40 x fib(27); with --smoke: 500/100, 30/20,
#            8 x fib(24). $PEERS_ARGS adds run_peers.py flags (see its --help).
# Examples:
#   scripts/bench.sh --smoke                      # a few seconds: checks the harness
#   scripts/bench.sh --peers                      # the real run (minutes; keep the machine quiet)
#   scripts/bench.sh --figures cpu --scaling-workers 1,2,3,4   # oversubscription curve
# Benchmarks are noisy: compare figures only within one run, on an otherwise idle machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${SIMQ_BENCH_BUILD:-$repo/build-bench}

peers=0
smoke=0
figures="throughput,latency,cpu,io,grid,idle"
scaling="1,2"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --peers) peers=1 ;;
    --smoke) smoke=1; args+=("$1") ;;
    --figures) figures=$2; args+=("$1" "$2"); shift ;;
    --figures=*) figures=${1#*=}; args+=("$1") ;;
    --scaling-workers) scaling=$2; args+=("$1" "$2"); shift ;;
    --scaling-workers=*) scaling=${1#*=}; args+=("$1") ;;
    *) args+=("$1") ;;
  esac
  shift
done

"$repo/scripts/install-deps.sh"
if [ "$peers" = 1 ]; then
  "$repo/scripts/install-deps.sh" --bench
elif ! command -v gnuplot >/dev/null; then
  "$repo/scripts/install-deps.sh" --bench || echo "bench: no gnuplot: no PNG" >&2
fi

if [ -f "$build/CMakeCache.txt" ]; then
  cmake "$build" >/dev/null  # an existing build keeps its settings
else
  cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSIMQ_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build" -j"$(nproc)" --target simq-bench >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/simq-bench-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if [ "$peers" = 1 ]; then
  # The peers' share of simq-bench's figures: they have no io, grid or idle figure.
  peer_figures=$(tr ',' '\n' <<<"$figures" | grep -xE 'throughput|latency|cpu' | paste -sd, || true)
  if [ -n "$peer_figures" ]; then
    sizes=()
    if [ "$smoke" = 1 ]; then
      sizes=(--throughput-jobs 500 --rq-throughput-jobs 100 --latency-jobs 30 --rq-latency-jobs 20
             --fib-jobs 8 --fib-n 24)
    fi
    echo "bench: peers (Celery, Dask, RQ) on $peer_figures..." >&2
    # shellcheck disable=SC2086  # PEERS_ARGS is a list of flags
    /usr/bin/python3 "$repo/bench/peers/run_peers.py" --figures "$peer_figures" \
      --scaling-workers "$scaling" "${sizes[@]}" ${PEERS_ARGS:-} --out "$tmp/peers.json"
    args+=(--peer-json "$tmp/peers.json")
  fi
fi

echo "bench: simq..." >&2
"$build/bin/simq-bench" "${args[@]}"
