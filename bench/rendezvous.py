#!/usr/bin/env python3
"""Rendezvous figures: how long N agents on one host take to form a round, and how
long after a launcher's SIGKILL the survivor's new round starts.

    bench/rendezvous.py --elastic-run build-bench/tools/elastic-run
        [--sizes 8,16,32,64,128,256] [--torchrun-sizes 8] [--backends etcd,c10d] [--repeats 3] [--torchrun-repeats N]
        [--out bench/rendezvous-results.md]
TORCH_PYTHON (default /usr/bin/python3): the Python with Debian's python3-torch.

Round: N launchers started together (up to 256 here: a c10d store's connection
limits grow with --nnodes, so all of them may come from one address), `--nnodes=N:N --nproc-per-node=1
--no-python /bin/true`, one rendezvous id; the time from starting the first to the
last one's exit (every one exit 0: the round formed, the workers ran, the exit
barrier passed). Reference: torchrun (PyTorch 1.13, its c10d backend: its etcd
backends need the v2 API and python3-etcd) with the same arguments.

Kill: two launchers `1:2` (`last_call_timeout=1`; the second started once the
first listens on the c10d port, so the killed one never hosts the store), one worker each that records the world size it was
started in and then waits; once the round of 2 runs, one launcher is SIGKILLed;
the figure is the time from the kill to the survivor's worker of the new round
(world size 1) starting. torchrun 1.13's, measured by hand with workers that run
collectives (its agent learns of a dead peer only from its own workers failing):
14.2-14.8 s on c10d, 14.5-14.7 s on etcd-v2; never, with workers like these.

Growth: for each size, how many times the round's time grows per doubling of N from
the size before it ((t(N) / t(M)) ^ (1 / log2(N / M))): 2.0 is linear, 1.0 flat.
The machine's load average (1 min) is written next to each size, before and after:
these figures are only as quiet as the machine was.

etcd: Debian's etcd-server, started here on free ports with a temporary data dir.
Nothing here asserts a time.
"""
import argparse
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bench_etcd_")
        self.port, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.log = open(os.path.join(self.dir, "etcd.log"), "w")
        self.process = subprocess.Popen(
            ["/usr/bin/etcd", "--name=bench", f"--data-dir={self.dir}/data", f"--listen-client-urls={client_url}",
             f"--advertise-client-urls={client_url}", f"--listen-peer-urls={peer_url}",
             f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=bench={peer_url}"],
            stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if b'"true"' in urllib.request.urlopen(f"{client_url}/health", timeout=2).read():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.close()
        raise RuntimeError("etcd did not become healthy")

    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        self.process.kill()
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def launcher_command(args, backend, endpoint, nnodes, run_id, worker, conf=""):
    if backend == "torchrun":
        return [os.environ.get("TORCH_PYTHON", "/usr/bin/python3"), os.path.join(ROOT, "tests", "conformance", "torchrun.py"), f"--nnodes={nnodes}",
                "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", f"--rdzv_id={run_id}",
                "--rdzv_conf=join_timeout=300" + conf, "--monitor_interval=0.1", "--no_python", *worker]
    return [args.elastic_run, f"--nnodes={nnodes}", "--nproc-per-node=1", f"--rdzv-backend={backend}",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", "--rdzv-conf=join_timeout=300" + conf,
            "--monitor-interval=0.1", "--no-python", *worker]


def endpoint_for(backend, etcd):
    return etcd.endpoint() if backend == "etcd" else f"127.0.0.1:{free_port()}"


def environment(scratch):
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=scratch)
    for name in list(env):
        if name.startswith(("PET_", "TORCHELASTIC_")):
            del env[name]
    return env


def time_round(args, backend, n, etcd, scratch):
    endpoint, run_id = endpoint_for(backend, etcd), f"round-{uuid.uuid4().hex[:8]}"
    command = launcher_command(args, backend, endpoint, f"{n}:{n}", run_id, ["/bin/true"])
    started = time.monotonic()
    agents = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment(scratch))
              for _ in range(n)]
    errors = [agent.communicate(timeout=600)[1] for agent in agents]
    elapsed = time.monotonic() - started
    failed = [(agent.returncode, err.decode(errors="replace")[-400:]) for agent, err in zip(agents, errors)
              if agent.returncode != 0]
    if failed:
        raise RuntimeError(f"{backend} N={n}: {len(failed)} agents failed, e.g. {failed[0]}")
    return elapsed


def time_kill(args, backend, etcd, scratch):
    out = tempfile.mkdtemp(prefix="bench_kill_", dir=scratch)
    worker = ["/bin/sh", "-c", f'touch {out}/w$WORLD_SIZE.$$; while [ ! -e {out}/stop ]; do sleep 0.05; done']
    endpoint = endpoint_for(backend, etcd)
    command = launcher_command(args, backend, endpoint, "1:2", f"kill-{uuid.uuid4().hex[:8]}", worker,
                               ",last_call_timeout=1")
    # The first agent hosts the c10d store (the host's death ends a c10d job, by
    # design): the second starts once it listens, and is the one killed.
    agents = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(scratch))]
    host, port = endpoint.rsplit(":", 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            time.sleep(0.01)
    agents.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=environment(scratch)))
    try:
        def count(world):
            return sum(1 for name in os.listdir(out) if name.startswith(f"w{world}."))

        deadline = time.monotonic() + 120
        while count(2) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{backend}: no round of 2")
            time.sleep(0.01)
        killed = time.monotonic()
        agents[1].send_signal(signal.SIGKILL)
        while count(1) < 1:
            if time.monotonic() > killed + 120:
                raise RuntimeError(f"{backend}: no new round after the kill")
            time.sleep(0.005)
        return time.monotonic() - killed
    finally:
        open(os.path.join(out, "stop"), "w").close()
        for agent in agents:
            try:
                agent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()


def fmt(values):
    return f"{statistics.median(values):.2f} s" + (f" ({min(values):.2f}-{max(values):.2f}, {len(values)} runs)"
                                                    if len(values) > 1 else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elastic-run", required=True)
    parser.add_argument("--sizes", default="8,16,32,64,128,256")
    parser.add_argument("--torchrun-sizes", default="8", help="torchrun's agents need ~230 MiB each")
    parser.add_argument("--backends", default="etcd,c10d")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torchrun-repeats", type=int, help="torchrun's rounds (default: --repeats)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "rendezvous-results.md"))
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",") if n]
    torchrun_sizes = [int(n) for n in args.torchrun_sizes.split(",") if n]
    backends = [b for b in args.backends.split(",") if b]

    scratch = tempfile.mkdtemp(prefix="bench_rdzv_")
    etcd = Etcd()
    rows = []
    medians = {backend: {} for backend in backends + ["torchrun"]}
    try:
        for n in sorted(set(sizes) | set(torchrun_sizes)):
            cells = {}
            load_before = os.getloadavg()[0]
            for backend in backends + ["torchrun"]:
                if backend == "torchrun" and n not in torchrun_sizes:
                    continue
                if backend != "torchrun" and n not in sizes:
                    continue
                repeats = args.torchrun_repeats or args.repeats if backend == "torchrun" else args.repeats
                try:
                    times = [time_round(args, backend, n, etcd, scratch) for _ in range(repeats)]
                    medians[backend][n] = statistics.median(times)
                    cells[backend] = fmt(times)
                    smaller = [m for m in medians[backend] if m < n]
                    if smaller:
                        m = max(smaller)
                        growth = (medians[backend][n] / medians[backend][m]) ** (1 / math.log2(n / m))
                        cells[backend] += f"; x{growth:.2f} per doubling from {m}"
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    cells[backend] = "failed"
                    print(error, file=sys.stderr)
                print(f"round N={n} {backend}: {cells[backend]}", flush=True)
            rows.append((f"round of {n} agents (load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)",
                         cells))
        kill_cells = {}
        for backend in backends:
            try:
                kill_cells[backend] = fmt([time_kill(args, backend, etcd, scratch) for _ in range(args.repeats)])
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                kill_cells[backend] = "failed"
                print(error, file=sys.stderr)
            print(f"kill {backend}: {kill_cells[backend]}", flush=True)
        kill_cells["torchrun"] = "14.2-14.8 s (c10d, collective workers, measured by hand); never with these workers"
        rows.append(("SIGKILL to the survivor's new round", kill_cells))
    finally:
        etcd.close()
        shutil.rmtree(scratch, ignore_errors=True)

    columns = backends + ["torchrun"]
    lines = [f"# Rendezvous figures ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{os.cpu_count()} CPUs, loopback)", "",
             "| figure | " + " | ".join(f"elastic-run {b}" if b != "torchrun" else "torchrun c10d" for b in columns)
             + " |", "| --- |" + " --- |" * len(columns)]
    for name, cells in rows:
        lines.append(f"| {name} | " + " | ".join(cells.get(c, "not run") for c in columns) + " |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
