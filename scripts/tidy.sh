#!/usr/bin/env bash
# clang-tidy (14) with the checked-in .clang-tidy over every source file of the
# build; any finding is an error. Uses its own build directory for compile_commands.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh clang-14 clang-tidy-14
build_dir=${BUILD_DIR:-build-tidy}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  -DELASTIC_BUILD_TESTS=ON -DELASTIC_BUILD_EXAMPLES=ON ${CMAKE_ARGS:-} >/dev/null
# Only the sources of this repository (not the package checks' generated projects).
mapfile -t files < <(git ls-files '*.cpp' | grep -v '^tests/package/')
run-clang-tidy-14 -quiet -p "$build_dir" -j "${TIDY_JOBS:-$(nproc)}" "${files[@]/#/$PWD/}"
