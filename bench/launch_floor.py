#!/usr/bin/env python3
"""Launch cost at larger N, for machines without hyperfine: elastic-run against the
posix_spawn floor (bench/src/spawn_floor.c), N workers of /bin/true, in alternating
rounds (the order flips every round). Prints one Markdown table row per N: medians,
interquartile ranges, the ratio, and the launcher's own CPU time per worker.

  bench/launch_floor.py --elastic-run build-bench/tools/elastic-run \\
      --spawn-floor build-bench/bench/spawn_floor --sizes 16,64,256 --runs 40
"""
import argparse
import os
import resource
import statistics
import tempfile
import time


def timed(argv, env):
    """Wall time of one run, and the CPU time of the process tree it reaped."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    pid = os.posix_spawn(argv[0], argv, env, file_actions=quiet)
    _, status = os.waitpid(pid, 0)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} exited {os.waitstatus_to_exitcode(status)}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu


def quartiles(values):
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def ms(seconds):
    return f"{seconds * 1e3:.2f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elastic-run", required=True)
    parser.add_argument("--spawn-floor", required=True)
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--runs", type=int, default=40, help="runs of each side per N")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    env = dict(os.environ)
    # Every launcher run leaves a log directory under TMPDIR: keep them off the disk.
    env["TMPDIR"] = tempfile.mkdtemp(prefix="elastic-launch-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    print("| N | elastic-run | spawn floor | ratio | CPU per run, ours / floor |")
    print("| --- | --- | --- | --- | --- |")
    for n in (int(s) for s in args.sizes.split(",")):
        commands = {
            "ours": [os.path.abspath(args.elastic_run), "--nproc-per-node", str(n), "--no-python", "/bin/true"],
            "floor": [os.path.abspath(args.spawn_floor), str(n), "/bin/true"],
        }
        for _ in range(args.warmup):
            for argv in commands.values():
                timed(argv, env)
        wall = {name: [] for name in commands}
        cpu = {name: [] for name in commands}
        order = list(commands)
        for _ in range(args.runs):
            for name in order:
                w, c = timed(commands[name], env)
                wall[name].append(w)
                cpu[name].append(c)
            order.reverse()
        ours, floor = statistics.median(wall["ours"]), statistics.median(wall["floor"])
        (o1, o3), (f1, f3) = quartiles(wall["ours"]), quartiles(wall["floor"])
        cpu_ratio = statistics.median(cpu["ours"]) / statistics.median(cpu["floor"])
        print(f"| {n} | {ms(ours)} (IQR {ms(o1)}-{ms(o3)}) | {ms(floor)} (IQR {ms(f1)}-{ms(f3)}) | "
              f"{ours / floor:.2f}x | {ms(statistics.median(cpu['ours']))} / {ms(statistics.median(cpu['floor']))}"
              f" ({cpu_ratio:.2f}x) |", flush=True)


if __name__ == "__main__":
    main()
