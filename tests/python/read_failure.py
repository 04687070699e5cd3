"""Reads error files with PyTorch's own classes and prints what it saw as JSON.

usage: read_failure.py NAME RANK:LOCAL_RANK:PID:EXITCODE:PATH [...]
Prints {"failures": {rank: {message, timestamp, signal_name, error_file,
timestamp_isoformat}}, "root_rank": r, "summary": str(ChildFailedError)}.
"""
import json
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure


def _signal_name(failure: ProcessFailure) -> str:
    # torch 1.13 raises for a signal number Python has no name for.
    try:
        return failure.signal_name()
    except ValueError:
        return "<N/A>"


def main() -> None:
    name = sys.argv[1]
    failures = {}
    for spec in sys.argv[2:]:
        rank, local_rank, pid, exitcode, path = spec.split(":", 4)
        failures[int(rank)] = ProcessFailure(int(local_rank), int(pid), int(exitcode), path)
    error = ChildFailedError(name, failures)
    out = {
        "failures": {
            str(rank): {
                "message": f.message,
                "timestamp": f.timestamp,
                "signal_name": _signal_name(f),
                "error_file": f.error_file,
                "timestamp_isoformat": f.timestamp_isoformat(),
            }
            for rank, f in failures.items()
        },
        "root_rank": error.get_first_failure()[0],
        "summary": str(error),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
