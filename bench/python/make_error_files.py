"""Writes COUNT error files of typical size under DIR/<rank>/error.json, the
bytes a Python @record worker leaves (json.dump of the nested format with a
12-frame traceback, about 1.3 KB each). Timestamps differ so one root cause wins.

usage: make_error_files.py DIR COUNT
"""
import json
import os
import sys


def traceback_text(rank: int) -> str:
    frames = "".join(
        f'  File "/opt/train/model/layer_{i}.py", line {40 + i}, in forward_{i}\n'
        f"    out = self.block_{i}(x, mask=mask, step=step)\n"
        for i in range(12)
    )
    return f"Traceback (most recent call last):\n{frames}RuntimeError: rank {rank}: loss is NaN at step 1200\n"


def main() -> None:
    root, count = sys.argv[1], int(sys.argv[2])
    for rank in range(count):
        os.makedirs(os.path.join(root, str(rank)), exist_ok=True)
        data = {
            "message": {
                "message": f"RuntimeError: rank {rank}: loss is NaN at step 1200",
                "extraInfo": {"py_callstack": traceback_text(rank), "timestamp": str(1795364710 + (rank * 7919) % 1000)},
            }
        }
        with open(os.path.join(root, str(rank), "error.json"), "w") as fp:
            json.dump(data, fp)


if __name__ == "__main__":
    main()
