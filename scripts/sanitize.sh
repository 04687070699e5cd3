#!/usr/bin/env bash
# Builds everything with clang 14 and a sanitizer, then runs the whole test suite
# (the packaging checks excepted: they rebuild the library with the default compiler).
#   scripts/sanitize.sh asan    AddressSanitizer + UndefinedBehaviorSanitizer, in build-asan
#   scripts/sanitize.sh tsan    ThreadSanitizer, in build-tsan
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:?usage: scripts/sanitize.sh asan|tsan}
# Everything below runs without address randomization (see scripts/without-aslr):
# the build runs the sanitized test programs too, to list their test cases.
if [[ -z ${ELASTIC_WITHOUT_ASLR:-} ]]; then ELASTIC_WITHOUT_ASLR=1 exec scripts/without-aslr "$0" "$@"; fi
scripts/install-deps.sh clang-14 libclang-rt-14-dev

# Signals stay the program's own: tests check that a worker dies by SIGSEGV or
# SIGABRT, and the library installs its own handlers for them. A sanitizer
# report exits with 66, which no test expects from a worker.
case "$mode" in
  asan)
    flags=address,undefined
    exclude=
    export ASAN_OPTIONS="exitcode=66:detect_leaks=1:handle_segv=0:handle_sigbus=0:handle_abort=0:handle_sigfpe=0:handle_sigill=0:detect_stack_use_after_return=1:strict_string_checks=1"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=66"
    export LSAN_OPTIONS="exitcode=66"
    ;;
  tsan)
    flags=thread
    export TSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/tsan.supp:exitcode=66:halt_on_error=1:second_deadlock_stack=1:handle_segv=0:handle_sigbus=0:handle_abort=0:handle_sigfpe=0:handle_sigill=0"
    # The launcher's spawn uses fork() in this build: ThreadSanitizer cannot follow
    # clone(CLONE_VM | CLONE_VFORK) (see multiprocessing/spawn.hpp).
    exclude=

    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac

build_dir=${BUILD_DIR:-build-$mode}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DELASTIC_SANITIZE="$flags" -DELASTIC_BUILD_TESTS=ON -DELASTIC_BUILD_EXAMPLES=ON ${CMAKE_ARGS:-}
cmake --build "$build_dir" -j"$(nproc)"
cd "$build_dir"
# A test program that could not start when the build listed its cases would add no
# test to CTest, silently: every program's cases must all be there.
for program in tests/test_*; do
  [[ -f $program && -x $program ]] || continue
  name=$(basename "$program")
  # (Catch2 v2 exits with the number of cases listed.)
  listed=$({ "$program" --list-test-names-only || true; } | grep -c . || true)
  registered=$(ctest -N -R "^$name:" | grep -c "Test *#" || true)
  if [[ $listed -ne $registered ]]; then
    echo "$name: CTest knows $registered of its $listed test cases (its listing failed at build time?)" >&2
    exit 1
  fi
done
"$root"/scripts/run-ctest.sh -j"$(nproc)" -E "^package:$exclude" ${CTEST_ARGS:-}
