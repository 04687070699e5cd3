"""A few steps of a tiny model under DistributedDataParallel (gloo, CPU).

Launch it exactly as with torchrun:

    elastic-run --standalone --nproc-per-node=2 examples/pytorch/train_ddp.py
    torchrun    --standalone --nproc_per_node=2 examples/pytorch/train_ddp.py

Each rank trains on its own shard of a synthetic regression problem; DDP
averages the gradients, so every rank ends with the same weights, which the
script checks. --fail-rank N makes rank N raise at step 3, to see the
launcher's failure summary.
"""
import argparse
import datetime
import os

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel


def parse_args():
    parser = argparse.ArgumentParser(description="tiny DDP training run")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds any rank waits for the others")
    return parser.parse_args()


@record
def main():
    args = parse_args()
    # env:// reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set by the launcher.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts them)
    model = DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    generator = torch.Generator().manual_seed(rank)  # each rank its own data
    for step in range(args.steps):
        if rank == args.fail_rank and step == 3:
            raise RuntimeError(f"rank {rank}: bad batch at step {step}")
        x = torch.randn(64, 4, generator=generator)
        loss = torch.nn.functional.mse_loss(model(x), x @ target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)

    # Averaged gradients keep the replicas identical: compare with rank 0's weights.
    weights = model.module.weight.detach().clone()
    reference = weights.clone()
    dist.broadcast(reference, src=0)
    if not torch.equal(weights, reference):
        raise RuntimeError(f"rank {rank}: weights diverged from rank 0's")
    print(f"rank {rank}/{world_size} (attempt {attempt}): done, replicas in sync", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
