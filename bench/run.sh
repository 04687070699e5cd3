#!/usr/bin/env bash
# The whole benchmark suite in one command: installs what is missing (Debian
# packages), builds in Release into ./build-bench, runs every figure against its
# reference and writes the table to bench/results.md.
#   bench/run.sh                 full run (about 10 minutes on 2 cores)
#   bench/run.sh --quick         few repetitions, to try it out
#   bench/run.sh --only read,record
# TORCHRUN: the reference torchrun command (default: Debian's torchrun through
# tests/conformance/torchrun.py, which fixes its Python 3.11 start-up);
# BUILD_DIR, JOBS: where and how wide to build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh hyperfine time libbenchmark-dev python3-torch

build_dir=${BUILD_DIR:-build-bench}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DELASTIC_BUILD_BENCH=ON \
  -DELASTIC_BUILD_TESTS=OFF -DELASTIC_BUILD_EXAMPLES=OFF -DELASTIC_BUILD_TOOLS=ON -DELASTIC_INSTALL=OFF >/dev/null
cmake --build "$build_dir" -j"${JOBS:-2}"
exec /usr/bin/python3 bench/run.py --build-dir "$build_dir" "$@"
