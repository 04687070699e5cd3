#!/bin/sh
# Demo: four example workers under elastic-run; rank 1 throws, rank 2 crashes.
# The launcher stops the other ranks at once and prints the root-cause summary.
# Installs missing Debian packages and builds what it needs into ./build first.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build"
"$root/scripts/install-deps.sh"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build" -j"$(nproc)" --target elastic-run elastic_example_worker >/dev/null
cd "$build"
echo "\$ elastic-run --nproc-per-node=4 examples/worker --fail-rank 1 --crash-rank 2" >&2
status=0
OMP_NUM_THREADS=1 tools/elastic-run --nproc-per-node=4 examples/worker --fail-rank 1 --crash-rank 2 || status=$?
echo "exit code: $status" >&2
