#!/usr/bin/env bash
# Formatting and static analysis in one command: clang-format (check only) and clang-tidy
# over simq's sources, using build/compile_commands.json (run scripts/build.sh first).
# Usage: scripts/lint.sh [files...]   (default: every .cpp outside tests/)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/format.sh --check
[ -f build/compile_commands.json ] || ./scripts/build.sh build >/dev/null
if [ "$#" -gt 0 ]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files 'common/*.cpp' 'broker/*.cpp' 'worker/*.cpp' 'producer/*.cpp' 'bench/*.cpp')
fi
clang-tidy -p build --quiet "${files[@]}"
