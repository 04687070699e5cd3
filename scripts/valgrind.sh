#!/usr/bin/env bash
# Runs the error path's programs under valgrind (memcheck): a recording worker in
# each way it can fail, a parent copying a child's file up, and a reader over
# hostile files. Uses the build of scripts/test.sh (BUILD_DIR, default build).
# Any memcheck error fails the script; the programs' own exit codes are checked too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh valgrind
build_dir=${BUILD_DIR:-build}
worker="$build_dir/tests/workers/record_worker"
reader="$build_dir/tests/workers/failure_reader"
[[ -x "$worker" && -x "$reader" ]] || { echo "build $build_dir first (scripts/test.sh)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ELASTIC_LOG_LEVEL=warning
memcheck=(valgrind -q --vgdb=no --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite)

expect() {  # expect CODE command...: runs it under memcheck, checks its exit code
  local want=$1
  shift
  local got=0
  "${memcheck[@]}" "$@" >"$work/out" 2>"$work/err" || got=$?
  if [[ $got -ne $want ]]; then
    echo "FAILED (exit $got, expected $want): $*" >&2
    cat "$work/err" >&2
    exit 1
  fi
  echo "ok: $*"
}

for mode in throw nested throw_int throw_cstr throw_struct; do
  TORCHELASTIC_ERROR_FILE="$work/$mode.json" expect 1 "$worker" "$mode"
done
TORCHELASTIC_ERROR_FILE="$work/exit.json" expect 3 "$worker" system_exit 3
TORCHELASTIC_ERROR_FILE="$work/parent.json" expect 1 "$worker" child_failure "$work/nested.json" 7
TORCHELASTIC_ERROR_FILE="$work/no_dir/../x/y.json" expect 1 "$worker" throw
# (RLIMIT_FSIZE is left to the test suite: valgrind itself cannot start under ulimit -f 0.)

printf '{"message": {"message": "x", "ext' >"$work/truncated.json"
printf '{"message": "\377\376", "timestamp": 1}' >"$work/utf8.json"
head -c 100000 /dev/zero | tr '\0' '[' >"$work/deep.json"
truncate -s 1G "$work/huge.json"
mkfifo "$work/fifo.json"
expect 0 "$reader" -6 "$work/nested.json" "$work/truncated.json" "$work/utf8.json" "$work/deep.json" \
  "$work/huge.json" "$work/fifo.json" "$work/missing.json" "$work/parent.json"
