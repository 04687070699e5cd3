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
