"""A worker that uses PyTorch's file-based timer client against the launcher's server.

    timer_worker.py OUT_DIR HANG_RANK   # HANG_RANK hangs inside a 1 s timer (-1: nobody)

Every rank writes OUT_DIR/<rank>.timer once its timer is set, runs a step inside
``expires(after=...)``, and writes OUT_DIR/<rank> once the step is over. The hanging
rank enters its timer only once every other rank has finished its step, so that a
slow start of the others (importing torch on a loaded machine) cannot race the kill.
"""
import os
import sys
import time

from torch.distributed.elastic.timer import FileTimerClient, configure, expires


def main():
    out_dir, hang_rank = sys.argv[1], int(sys.argv[2])
    rank = int(os.environ["RANK"])
    configure(FileTimerClient(os.environ["TORCHELASTIC_TIMER_FILE"]))
    if rank == hang_rank:
        others = [str(r) for r in range(int(os.environ["WORLD_SIZE"])) if r != rank]
        while not all(os.path.exists(os.path.join(out_dir, r)) for r in others):
            time.sleep(0.05)
    with expires(after=1 if rank == hang_rank else 60, scope="train_step"):
        open(os.path.join(out_dir, f"{rank}.timer"), "w").close()
        if rank == hang_rank:
            time.sleep(60)
        else:
            time.sleep(0.2)
    open(os.path.join(out_dir, str(rank)), "w").close()
    if hang_rank >= 0:
        time.sleep(60)  # the launcher stops this rank once the hung one is killed


if __name__ == "__main__":
    main()
