"""PyTorch's side of the reading-failures figure: for N error files under
DIR/<rank>/error.json, build a ProcessFailure each and a ChildFailedError, then
call format_msg(), REPS times, timed in-process (the torch import is excluded).
Prints {"n": N, "times_s": [...]} on stdout; with --summary, prints the summary
instead (to compare it byte for byte with ours).

usage: read_failures.py DIR N REPS [--summary]
"""
import json
import sys
import time

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure


def read_all(root: str, n: int) -> str:
    failures = {
        rank: ProcessFailure(local_rank=rank, pid=100000 + rank, exitcode=1, error_file=f"{root}/{rank}/error.json")
        for rank in range(n)
    }
    return ChildFailedError("train", failures).format_msg()


def main() -> None:
    root, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if "--summary" in sys.argv[4:]:
        sys.stdout.write(read_all(root, n))
        return
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        read_all(root, n)
        times.append(time.perf_counter() - start)
    json.dump({"n": n, "times_s": times}, sys.stdout)


if __name__ == "__main__":
    main()
