#!/usr/bin/env bash
# clang-format over all of simq's C++: `--check` fails on any difference, else rewrites.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.cpp' '*.h' 2>/dev/null || find common broker worker producer tests examples -name '*.cpp' -o -name '*.h')
[ "${#files[@]}" -gt 0 ] || exit 0
if [ "${1:-}" = "--check" ]; then
  clang-format --dry-run -Werror "${files[@]}"
else
  clang-format -i "${files[@]}"
fi
