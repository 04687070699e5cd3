#!/usr/bin/env bash
# Builds the libFuzzer targets with clang 14 under ASan + UBSan and runs each for a
# bounded time, starting from its seed corpus in tests/fuzz/corpus/<name>. Any crash,
# leak, timeout or sanitizer report fails the script; the input that caused it is
# left in $BUILD_DIR/artifacts (add it to the corpus once fixed).
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh error_file      one target
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh clang-14 libclang-rt-14-dev

build_dir=${BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-60}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DELASTIC_SANITIZE=address,undefined -DELASTIC_BUILD_FUZZERS=ON \
  -DELASTIC_BUILD_TESTS=OFF -DELASTIC_BUILD_EXAMPLES=OFF -DELASTIC_BUILD_TOOLS=OFF ${CMAKE_ARGS:-}

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for dir in tests/fuzz/corpus/*/; do targets+=("$(basename "$dir")"); done
fi
cmake --build "$build_dir" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
mkdir -p "$build_dir/artifacts"
for target in "${targets[@]}"; do
  echo "== fuzz_$target for ${seconds}s"
  # New inputs go to a scratch corpus; the seed corpus in the repository stays as it is.
  work="$build_dir/corpus/$target"
  mkdir -p "$work"
  dict=()
  [[ -f "tests/fuzz/$target.dict" ]] && dict=(-dict="tests/fuzz/$target.dict")
  scripts/without-aslr "$build_dir/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build_dir/artifacts/${target}-" "${dict[@]}" \
    "$work" "tests/fuzz/corpus/$target"
done
