#!/usr/bin/env python3
"""Failure propagation: how long after a worker fails on one node the last node of
the job has stopped its workers and exited.

    bench/propagation.py --elastic-run build-bench/tools/elastic-run
        [--sizes 2,8,32] [--torchrun-sizes 2,8,32] [--backends c10d,static,etcd]
        [--repeats 3] [--cap 30] [--out bench/propagation-results.md]
TORCHRUN (default ../shared/tools/torchrun from the repository root): the reference.

N launchers on loopback form one job (`--nnodes=N --nproc-per-node=1
--no-python`, `--monitor-interval=0.1`), one worker each: every worker marks that
it started and waits until all N have; then the last rank writes the time and
exits 1, the others sleep (as ranks blocked in a collective do). The figure is the
time from that failure to the last launcher's exit (it exits once its workers are
stopped). A launcher still running `--cap` seconds after the failure is killed and
the run counted as "did not stop". Reference: torchrun 1.13 with the same arguments
(c10d and static; its etcd backends need the v2 API).
Nothing here asserts a time.
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid

from rendezvous import Etcd, environment, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(out, n):
    return ["/bin/sh", "-c",
            f'touch {out}/started.$RANK; while [ $(ls {out} | grep -c started) -lt {n} ]; do sleep 0.02; done; '
            f'if [ "$RANK" = "{n - 1}" ]; then date +%s.%N > {out}/failed.tmp; mv {out}/failed.tmp {out}/failed; '
            'exit 1; fi; exec sleep 600']


def command(tool, args, backend, n, node_rank, endpoint, run_id, work):
    torch = tool == "torchrun"
    def u(option):  # torchrun 1.13 takes underscore flags only
        if not torch:
            return option
        name, eq, value = option.partition("=")
        return "--" + name[2:].replace("-", "_") + eq + value
    cmd = [args.torchrun] if torch else [args.elastic_run]
    cmd += [f"--nnodes={n}", u("--nproc-per-node=1"), u("--monitor-interval=0.1")]
    if backend == "static":
        host, port = endpoint.rsplit(":", 1)
        cmd += [u(f"--node-rank={node_rank}"), u(f"--master-addr={host}"), u(f"--master-port={port}")]
    else:
        cmd += [u(f"--rdzv-backend={backend}"), u(f"--rdzv-endpoint={endpoint}"), u(f"--rdzv-id={run_id}"),
                u("--rdzv-conf=join_timeout=300")]
    return cmd + [u("--no-python")] + work


def run_once(args, tool, backend, n, etcd, scratch):
    out = tempfile.mkdtemp(prefix="bench_prop_", dir=scratch)
    endpoint = etcd.endpoint() if backend == "etcd" else f"127.0.0.1:{free_port()}"
    run_id = f"prop-{uuid.uuid4().hex[:8]}"
    work = worker(out, n)
    agents = [subprocess.Popen(command(tool, args, backend, n, r, endpoint, run_id, work), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=environment(scratch), start_new_session=True)
              for r in range(n)]
    ended = [None] * n

    def watch(i):
        agents[i].wait()
        ended[i] = time.time()

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    failed_file = os.path.join(out, "failed")
    deadline = time.monotonic() + 600
    while not os.path.exists(failed_file) and time.monotonic() < deadline and not all(ended):
        time.sleep(0.01)
    result = None
    if os.path.exists(failed_file):
        failed_at = float(open(failed_file).read())
        stop_by = failed_at + args.cap
        while not all(ended) and time.time() < stop_by:
            time.sleep(0.01)
        if all(ended):
            result = max(ended) - failed_at
    for agent in agents:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    for t in threads:
        t.join()
    still = sum(1 for agent in agents if agent.returncode == -signal.SIGKILL)
    shutil.rmtree(out, ignore_errors=True)
    return result, still


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--elastic-run", required=True)
    parser.add_argument("--torchrun", default=os.environ.get("TORCHRUN", os.path.join(ROOT, "..", "shared", "tools",
                                                                                         "torchrun")))
    parser.add_argument("--sizes", default="2,8,32")
    parser.add_argument("--torchrun-sizes", default="2,8,32")
    parser.add_argument("--backends", default="c10d,static,etcd")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torchrun-repeats", type=int, default=1)
    parser.add_argument("--cap", type=float, default=30.0)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "propagation-results.md"))
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench_prop_scratch_")
    etcd = Etcd() if "etcd" in args.backends.split(",") else None
    rows = []
    try:
        for backend in args.backends.split(","):
            for n in [int(s) for s in args.sizes.split(",")]:
                sides = [("ours", args.repeats)]
                if backend != "etcd" and str(n) in args.torchrun_sizes.split(","):
                    sides.append(("torchrun", args.torchrun_repeats))
                figures = {}
                for tool, repeats in sides:
                    runs = [run_once(args, tool, backend, n, etcd, scratch) for _ in range(repeats)]
                    stopped = [r for r, _ in runs if r is not None]
                    hung = [still for r, still in runs if r is None]
                    text = f"{statistics.median(stopped):.3f} s" if stopped else ""
                    if hung:
                        text += (", " if text else "") + (f"{len(hung)} of {repeats} runs did not stop within "
                                                          f"{args.cap:.0f} s ({max(hung)} of {n} launchers left)")
                    figures[tool] = text
                    print(f"{backend} N={n} {tool}: {text}", flush=True)
                rows.append((backend, n, figures.get("ours", ""), figures.get("torchrun", "not run")))
    finally:
        if etcd:
            etcd.close()
        shutil.rmtree(scratch, ignore_errors=True)
    with open(args.out, "w") as f:
        f.write("# Failure propagation\n\nFrom a worker's failure on one node to the last node's launcher exiting "
                "(its workers stopped), N launchers of one worker each on loopback, `--monitor-interval=0.1`; "
                f"median of {args.repeats} runs (torchrun: {args.torchrun_repeats}). Written by "
                "`bench/propagation.py`.\n\n| backend | launchers | elastic-run | torchrun 1.13 |\n| --- | --- | --- | --- |\n")
        for backend, n, ours, ref in rows:
            f.write(f"| {backend} | {n} | {ours} | {ref} |\n")


if __name__ == "__main__":
    main()
