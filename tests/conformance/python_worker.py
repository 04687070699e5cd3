"""A Python worker using PyTorch's own @record, the counterpart of record_worker.

    /usr/bin/python3 python_worker.py MODE [ARGS]

MODE: ok, raise (RuntimeError "foobar"), chained (raise ... from ...), unicode,
key_error, custom, child_failed FILE CODE (a ChildFailedError whose root cause
is FILE with exit code CODE, so @record copies FILE up), dump FILE CODE
(ErrorHandler().dump_error_file directly), signal N (os.kill itself).
"""
import os
import signal
import sys

from torch.distributed.elastic.multiprocessing.errors import (
    ChildFailedError,
    ErrorHandler,
    ProcessFailure,
    record,
)


class SentinelError(Exception):
    pass


def inner():
    raise ValueError("learning rate must be positive")


@record
def main(mode, *args):
    if mode == "ok":
        return
    if mode == "raise":
        raise RuntimeError("foobar")
    if mode == "chained":
        try:
            inner()
        except ValueError as e:
            raise RuntimeError("optimizer setup failed") from e
    if mode == "unicode":
        raise ValueError("Ошибка 失敗 🔥\nsecond line\twith tab \x1b[31m")
    if mode == "key_error":
        raise KeyError("lr")
    if mode == "custom":
        raise SentinelError("foobar")
    if mode == "child_failed":
        path, code = args[0], int(args[1])
        raise ChildFailedError("trainer", {0: ProcessFailure(local_rank=0, pid=1234, exitcode=code, error_file=path)})
    if mode == "dump":
        ErrorHandler().dump_error_file(args[0], int(args[1]))
        return
    if mode == "signal":
        os.kill(os.getpid(), int(args[0]))
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main(*sys.argv[1:])
