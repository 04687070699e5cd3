#!/usr/bin/env bash
# Builds elastic with its tests and examples and runs the whole test suite
# (unit tests, real worker processes, PyTorch compatibility, packaging).
#   scripts/test.sh            build in ./build
#   BUILD_DIR=x scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/install-deps.sh

build_dir=${BUILD_DIR:-build}
jobs=$(nproc)
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" \
  -DELASTIC_BUILD_TESTS=ON -DELASTIC_BUILD_EXAMPLES=ON ${CMAKE_ARGS:-}
cmake --build "$build_dir" -j"$jobs"
cd "$build_dir"
"$root"/scripts/run-ctest.sh -j"$jobs" ${CTEST_ARGS:-}
