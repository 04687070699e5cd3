"""Runs Debian's torchrun (PyTorch 1.13) on Python 3.11.

On Python 3.11 torchrun 1.13 fails while parsing its own --redirects/--tee defaults:
Std.from_str tests IntFlag membership, which no longer accepts the composite value 3.
This replaces that one parser with an equivalent that builds the flag from the
integer; everything else is torchrun as installed.

    /usr/bin/python3 torchrun.py --standalone --nproc_per_node=2 --no_python WORKER ...
"""
import re
import sys

from torch.distributed.elastic.multiprocessing import api


def _std_from_str(cls, text):
    if re.match(api._VALUE_REGEX, text):
        return cls(int(text))
    if re.match(api._MAPPING_REGEX, text):
        return {int(rank): cls(int(value)) for rank, value in (item.split(":") for item in text.split(","))}
    raise ValueError(f"{text} does not match: <{api._VALUE_REGEX}> or <{api._MAPPING_REGEX}>")


api.Std.from_str = classmethod(_std_from_str)

# Guarded: with --run_path, multiprocessing's spawn imports this file again in each worker.
if __name__ == "__main__":
    from torch.distributed.run import main

    sys.exit(main())
