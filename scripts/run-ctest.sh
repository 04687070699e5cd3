#!/usr/bin/env bash
# Runs CTest in the current build directory (arguments go to ctest). When tests
# fail, it runs the failed ones once more, to tell a steady failure from a rare
# one, and ends with the last lines each failed test printed the first time, so
# that a log cut to its head and tail still shows why. Any failure of the first
# run fails the script, whatever the second run gives.
set -uo pipefail

ctest --output-on-failure "$@"
status=$?
[[ $status -eq 0 ]] && exit 0

failed_list=Testing/Temporary/LastTestsFailed.log
[[ -f $failed_list ]] || exit "$status"
first_log=$(mktemp)
trap 'rm -f "$first_log"' EXIT
cp Testing/Temporary/LastTest.log "$first_log"
failed=$(sed 's/^[0-9]*://' "$failed_list")

echo "== the failed tests, run once more"
failed_again=
ctest --output-on-failure --rerun-failed "$@" || failed_again=$(sed 's/^[0-9]*://' "$failed_list")

echo "== what each failed test printed last, the first time"
while IFS= read -r name; do
  if grep -qxF -- "$name" <<<"$failed_again"; then verdict="failed again"; else verdict="passed when run again"; fi
  echo "--- $name ($verdict)"
  # LastTest.log: a test's output sits between "Output:" and "<end of output>",
  # after the line "N/M Test: <name>".
  awk -v name="$name" '
    /^[0-9]+\/[0-9]+ Test: / { line = $0; sub(/^[0-9]+\/[0-9]+ Test: /, "", line); if (line == name) found = 1; next }
    found && /^Output:/ { getline; printing = 1; next }
    printing && /^<end of output>/ { exit }
    printing { print }
  ' "$first_log" | tail -n 30
done <<<"$failed"
exit "$status"
