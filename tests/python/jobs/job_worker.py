"""A PyTorch worker as torchrun users write them, for the launcher's real-job tests.

It reads its place in the job from the TorchElastic environment, joins the
process group (gloo, CPU), checks one all_reduce over every rank and reports
what it saw. Every wait is bounded by --timeout, so a job that cannot form
fails instead of hanging.

Run as a script, with -m job_worker, or through runpy (--run-path).
"""
import argparse
import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", help="write <out-dir>/<rank> with what this worker saw")
    parser.add_argument("--no-group", action="store_true", help="do not join the process group")
    parser.add_argument("--init-method", default="env://")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for every collective wait")
    parser.add_argument("--fail-rank", type=int, default=-1, help="this rank raises after joining the group")
    parser.add_argument("--fail-attempt", type=int, default=0, help="... on this restart count only")
    parser.add_argument("--launched-file", help="write is_torchelastic_launched() here and stop")
    parser.add_argument("--hold-until", help="after the all_reduce, wait (within --timeout) until this file exists")
    return parser.parse_args(argv)


def env_int(name):
    return int(os.environ[name])


def join_and_reduce(args, rank, world_size, attempt):
    """Joins the group and all_reduces a one-hot vector of its rank: every
    element of the sum must be exactly 1."""
    started = time.monotonic()
    dist.init_process_group(
        backend="gloo",
        init_method=args.init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=args.timeout),
    )
    seconds = time.monotonic() - started
    if dist.get_rank() != rank or dist.get_world_size() != world_size:
        raise RuntimeError(f"group says rank {dist.get_rank()}/{dist.get_world_size()}, env says {rank}/{world_size}")

    # Every rank counts itself in before the all_reduce, so once it is done the
    # count is exactly world_size, unless an earlier attempt's keys survived.
    store = dist.distributed_c10d._get_default_store()
    store.add("joined", 1)
    t = torch.nn.functional.one_hot(torch.tensor(rank), num_classes=world_size)
    dist.all_reduce(t)
    if t.tolist() != [1] * world_size:
        raise RuntimeError(f"all_reduce gave {t.tolist()}")
    joined = store.add("joined", 0)
    if joined != world_size:
        raise RuntimeError(f"store counted {joined} joins for {world_size} ranks: stale state from an earlier attempt")
    return t.tolist(), seconds


@record
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.launched_file:
        with open(args.launched_file, "w") as f:
            f.write(str(dist.is_torchelastic_launched()))
        return

    rank = env_int("RANK")
    world_size = env_int("WORLD_SIZE")
    attempt = env_int("TORCHELASTIC_RESTART_COUNT")
    seen = {
        name: os.environ.get(name)
        for name in (
            "RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE",
            "ELASTIC_TEST_INTERPRETER", "NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        )
    }
    seen["executable"] = sys.executable
    seen["is_torchelastic_launched"] = dist.is_torchelastic_launched()

    if not args.no_group:
        # The init time is reported for measurements only; no test asserts on it.
        seen["all_reduce"], seen["init_seconds"] = join_and_reduce(args, rank, world_size, attempt)
        print(f"rank {rank}/{world_size} attempt {attempt}: all_reduce ok", flush=True)
        if args.hold_until:
            deadline = time.monotonic() + args.timeout
            while not os.path.exists(args.hold_until) and time.monotonic() < deadline:
                time.sleep(0.05)
        if rank == args.fail_rank and attempt == args.fail_attempt:
            raise RuntimeError(f"rank {rank} fails on attempt {attempt} after joining the group")
        # Nobody leaves (taking rank 0's store with it) before all are done;
        # a failed peer makes this raise within the timeout.
        dist.barrier()
        dist.destroy_process_group()

    if args.out_dir:
        path = os.path.join(args.out_dir, str(rank))
        with open(path + ".tmp", "w") as f:
            json.dump(seen, f)
        os.rename(path + ".tmp", path)


if __name__ == "__main__":
    main()
