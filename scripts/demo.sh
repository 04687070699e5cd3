<<<<<<< HEAD
#!/usr/bin/env bash
# Demo: three workers, rank 1 fails with a nested exception; the parent prints
# the root-cause summary built from the workers' error files.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target elastic_example_worker elastic_example_parent >/dev/null
set +e
build/examples/parent 3 build/examples/worker --fail-rank 1
echo "parent exited with $?"
=======
#!/bin/sh
# Demo: four example workers under elastic-run; rank 1 throws, rank 2 crashes.
# The launcher stops the other ranks at once and prints the summary.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build"
if [ ! -x "$build/tools/elastic-run" ] || [ ! -x "$build/examples/worker" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  ninja -C "$build" -j2 elastic-run elastic_example_worker >/dev/null
fi
cd "$build"
echo "\$ elastic-run --nproc-per-node=4 examples/worker --fail-rank 1 --crash-rank 2" >&2
status=0
OMP_NUM_THREADS=1 tools/elastic-run --nproc-per-node=4 examples/worker --fail-rank 1 --crash-rank 2 || status=$?
echo "exit code: $status" >&2
>>>>>>> launcher
