#!/bin/sh
# Failure reaction time: rank 2 of 4 exits 3 after 0.3 s while the others sleep;
# prints, per run, the milliseconds from that exit to the launcher's own exit
# (survivors stopped and reaped, summary printed).
#   scripts/reaction_time.sh [RUNS]                       # elastic-run from build/
#   LAUNCHER="/work/shared/tools/torchrun --monitor_interval=0.1" scripts/reaction_time.sh 5
set -eu
runs=${1:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
launcher=${LAUNCHER:-"$root/build/tools/elastic-run"}
case "$launcher" in
  *torchrun*) flags="--nproc_per_node=4 --no_python --master_port=29651" ;;
  *) flags="--nproc-per-node=4" ;;
esac
i=0
while [ "$i" -lt "$runs" ]; do
  dir=$(mktemp -d)
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $launcher $flags /bin/sh -c \
    'if [ "$RANK" = 2 ]; then sleep 0.3; date +%s%N > "$0/failed"; exit 3; fi; exec sleep 30' "$dir" \
    >/dev/null 2>&1 || true
  end=$(date +%s%N)
  echo "run $i: $(( (end - $(cat "$dir/failed")) / 1000000 )) ms"
  rm -rf "$dir"
  i=$((i + 1))
done
