"""Runs every benchmark figure against its reference in one go and writes the
table (markdown) to stdout and to bench/results.md. Called by bench/run.sh,
which installs what is missing and builds in Release first.

usage: run.py --build-dir DIR [--quick] [--only launch,failure,tee,record,throw,crash,read,memory] [--out FILE]
              [--tee-also NAME=PATH]... [--tee-lines N] [--tee-runs N] [--tee-console pipe|file]

Each ratio is taken within this run: the commands of a figure are measured in
alternating rounds (hyperfine for short whole-process timings, proc_stats or
/usr/bin/time for CPU and memory, Google Benchmark for in-process timings), so
a change in machine load during the run hits ours and the reference alike.
"""
import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RETRIES = []  # commands whose hyperfine round had to be run again
CPU = {}  # command line -> [mean CPU seconds per run, one per hyperfine round]


# ---------------------------------------------------------------- statistics

def quantile(values, q):
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def summary(values):
    return {
        "median": statistics.median(values),
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def fmt_time(seconds):
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e9:.1f} ns"


def fmt_spread(values, unit=fmt_time):
    s = summary(values)
    return f"{unit(s['median'])} (IQR {unit(s['p25'])}–{unit(s['p75'])}, n={s['n']})"


# ---------------------------------------------------------------- running things

def log(text):
    print(text, file=sys.stderr, flush=True)


def hyperfine(commands, runs, rounds, warmup=1, shell=False, ignore_failure=False, prepare=None):
    """Times `commands` ({name: command line}) with hyperfine in `rounds`
    alternating rounds of `runs` runs each; returns {name: [seconds...]}."""
    times = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            export = os.path.join(tmp, f"round{round_index}.json")
            # Warm-up runs (page cache, dynamic loader) only before the first round.
            args = ["hyperfine", "--style", "none", "--runs", str(runs), "--warmup", str(warmup if round_index == 0 else 0),
                    "--export-json", export]
            if not shell:
                args.append("-N")
            if ignore_failure:
                args.append("-i")
            if prepare:
                args += ["--prepare", prepare]
            names = list(commands)
            # Alternate the order between rounds as well, so neither side always goes first.
            if round_index % 2:
                names.reverse()
            for name in names:
                args += ["--command-name", name, commands[name]]
            for attempt in range(3):
                done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if done.returncode == 0:
                    break
                # A shared machine: another job may hold a port or a file for a moment. Retried, and told.
                log(f"  hyperfine failed (attempt {attempt + 1}): {done.stderr.strip().splitlines()[-1:]}")
                RETRIES.append(" / ".join(commands.values()))
            else:
                raise RuntimeError(f"hyperfine failed 3 times: {done.stderr}")
            with open(export) as fp:
                for result in json.load(fp)["results"]:
                    times[result["command"]].extend(result["times"])
                    # CPU time (user + system, the children's included) of each round, a mean per run.
                    CPU.setdefault(commands[result["command"]], []).append(result["user"] + result["system"])
    return times


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gnu_time_maxrss(command, runs):
    """Peak RSS (KiB) of `command` (a list) per run, with /usr/bin/time."""
    values = []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "time.txt")
        for _ in range(runs):
            subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out] + command,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(out) as fp:
                values.append(int(fp.read().split()[-1]))
    return values


class Table:
    def __init__(self):
        self.rows = []  # (figure, ours, reference, ratio, target, met)
        self.details = []
        self.notes = []

    def add(self, figure, ours, reference, ratio, target, met):
        row = (figure, ours, reference, ratio, target, {True: "yes", False: "**no**", None: "—"}[met])
        self.rows.append(row)
        log("  " + " | ".join(row))

    def markdown(self):
        lines = ["| figure | ours | reference | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


# ---------------------------------------------------------------- the figures

class Bench:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build_dir)
        self.bin = os.path.join(self.build, "bench")
        self.launcher = os.path.join(self.build, "tools", "elastic-run")
        self.python = os.environ.get("TORCH_PYTHON", "/usr/bin/python3")
        # Debian's torchrun through the repository's runner (its Python 3.11 start-up
        # fix), unless TORCHRUN names another command.
        default_torchrun = [self.python, os.path.join(ROOT, "tests", "conformance", "torchrun.py")]
        self.torchrun = shlex.split(os.environ["TORCHRUN"]) if os.environ.get("TORCHRUN") else default_torchrun
        self.quick = args.quick
        self.table = Table()
        # Scratch space on tmpfs when there is one: every launcher run leaves a log
        # directory under $TMPDIR (torchrun never removes its own), thousands in all.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.tmp = tempfile.mkdtemp(prefix="elastic-bench-", dir=shm)
        self.disk_tmp = tempfile.mkdtemp(prefix="elastic-bench-disk-", dir=os.environ.get("TMPDIR", "/tmp"))
        os.environ["TMPDIR"] = self.tmp

    def tool(self, name):
        return os.path.join(self.bin, name)

    def reps(self, full, quick):
        return quick if self.quick else full

    def have_launcher(self):
        return os.access(self.launcher, os.X_OK)

    def have_torchrun(self):
        return os.access(self.torchrun[0], os.X_OK) and all(os.path.exists(a) for a in self.torchrun[1:2])

    def missing(self, figure, what):
        self.table.add(figure, "not measured", "", "", "", None)
        self.table.notes.append(f"{figure}: not measured: {what}.")

    def elastic_run(self, nproc, *rest):
        return [self.launcher, "--nproc-per-node", str(nproc), "--no-python", *rest]

    def torchrun_cmd(self, nproc, *rest):
        # torchrun hosts a TCP store on the master port: a free one, not 29500, so
        # another torchrun on the machine cannot make it fail.
        return [*self.torchrun, "--nproc_per_node", str(nproc), "--no_python", "--monitor_interval", "0.1",
                "--master_port", str(free_port()), *rest]

    # 1. launch and reap N workers of /bin/true
    def launch(self):
        log("launch: elastic-run vs posix_spawn floor vs torchrun, N workers of /bin/true")
        if not self.have_launcher():
            return self.missing("launch", f"{self.launcher} not built")
        for n in (1, 4, 16, 64):
            fast = hyperfine({
                "floor": shlex.join([self.tool("spawn_floor"), str(n), "/bin/true"]),
                "ours": shlex.join(self.elastic_run(n, "/bin/true")),
            }, runs=self.reps(20, 5), rounds=self.reps(10, 2), warmup=3)
            ratio_floor = statistics.median(fast["ours"]) / statistics.median(fast["floor"])
            ours_cpu = statistics.median(CPU[shlex.join(self.elastic_run(n, "/bin/true"))])
            floor_cpu = statistics.median(CPU[shlex.join([self.tool("spawn_floor"), str(n), "/bin/true"])])
            self.table.details.append(
                f"launch N={n}: ours {fmt_spread(fast['ours'])}; floor {fmt_spread(fast['floor'])}; CPU time per run "
                f"(workers included, median of the rounds' means): ours {fmt_time(ours_cpu)}, floor {fmt_time(floor_cpu)}, "
                f"{ours_cpu / floor_cpu:.2f}x")
            target = "≤ 1.5x floor at N=64" if n == 64 else "—"
            self.table.add(f"launch N={n}, vs floor", fmt_time(statistics.median(fast["ours"])),
                           f"floor {fmt_time(statistics.median(fast['floor']))}",
                           f"{ratio_floor:.2f}x (CPU time {ours_cpu / floor_cpu:.2f}x)", target,
                           ratio_floor <= 1.5 if n == 64 else None)
            if not self.have_torchrun():
                continue
            slow = hyperfine({
                "ours": shlex.join(self.elastic_run(n, "/bin/true")),
                "torchrun": shlex.join(self.torchrun_cmd(n, "/bin/true")),
            }, runs=self.reps(2, 1), rounds=self.reps(3, 1), warmup=1)
            # Ours from every round of this N: a few runs between torchrun's 1-second ones
            # are too few to stand for ours alone when another job briefly loads the machine.
            ours, ref = statistics.median(slow["ours"] + fast["ours"]), statistics.median(slow["torchrun"])
            self.table.details.append(f"launch N={n}: torchrun {fmt_spread(slow['torchrun'])}; ours in the torchrun rounds "
                                      f"{fmt_spread(slow['ours'])}, in all rounds {fmt_spread(slow['ours'] + fast['ours'])}")
            self.table.add(f"launch N={n}, vs torchrun", fmt_time(ours), f"torchrun {fmt_time(ref)}",
                           f"{ref / ours:.0f}x faster", "≥ 20x faster", ref / ours >= 20)
        if not self.have_torchrun():
            self.table.notes.append(f"launch vs torchrun: not measured: {shlex.join(self.torchrun)} not found (set TORCHRUN).")

    # 2. failure reaction: rank 2 exits 3 at once, the others sleep
    def failure(self):
        log("failure: 4 workers, rank 2 exits 3 at once: start to launcher exit")
        if not self.have_launcher():
            return self.missing("failure reaction", f"{self.launcher} not built")
        worker = self.tool("failing_worker")
        commands = {"ours": shlex.join(self.elastic_run(4, worker))}
        if self.have_torchrun():
            commands["torchrun"] = shlex.join(self.torchrun_cmd(4, worker))
        times = hyperfine(commands, runs=self.reps(3, 2), rounds=self.reps(4, 1), warmup=1, ignore_failure=True)
        ours = statistics.median(times["ours"])
        self.table.details.append(f"failure reaction: ours {fmt_spread(times['ours'])}")
        if "torchrun" in times:
            ref = statistics.median(times["torchrun"])
            self.table.details.append(f"failure reaction: torchrun (--monitor_interval 0.1) {fmt_spread(times['torchrun'])}")
            self.table.add("failure reaction (start to exit)", fmt_time(ours), f"torchrun {fmt_time(ref)}",
                           f"{ref / ours:.0f}x faster", "< 50 ms", ours < 0.050)
        else:
            self.table.add("failure reaction (start to exit)", fmt_time(ours), "", "", "< 50 ms", ours < 0.050)
        # Both must have reported the failure with exit code 1, or the timing means nothing.
        for name, command in commands.items():
            rc = subprocess.run(shlex.split(command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
            if rc != 1:
                self.table.notes.append(f"failure reaction: {name} exited {rc}, not 1.")

    # 3. tee: one worker writing 10 million 100-byte lines
    def tee(self):
        log("tee: one worker writes 10M lines of 100 bytes, -t 3, prefix template")
        if not self.have_launcher():
            return self.missing("tee", f"{self.launcher} not built")
        lines = self.args.tee_lines or self.reps(10_000_000, 2_000_000)
        width = 100
        payload = lines * width
        # The log files (1 GB a run) go to tmpfs by default, so that the figure is
        # the launcher's and not the disk's; TEE_LOG_ROOT overrides it. A short
        # disk-backed run is reported beside it.
        main_root = os.environ.get("TEE_LOG_ROOT", self.tmp)
        results = self.measure_tee(main_root, lines, width, self.args.tee_runs or self.reps(5, 2), self.reps(3, 1),
                                   with_torchrun=True)
        disk = None
        if main_root != self.disk_tmp and not self.args.tee_also:
            disk = self.measure_tee(self.disk_tmp, lines, width, self.reps(2, 1), 0, with_torchrun=False)

        def describe(stats):
            walls = [s["wall_s"] for s in stats]
            # The launcher's own CPU; for the floor (a shell pipeline) that of its children, writer included.
            cpu = [s["self_user_s"] + s["self_sys_s"] + (s["children_user_s"] + s["children_sys_s"] if s["floor"] else 0)
                   for s in stats]
            ok = all(s["check"]["ok"] for s in stats)
            wall = statistics.median(walls)
            text = (f"wall {fmt_spread(walls)}; {'CPU of writer + tee_floor' if stats[0]['floor'] else 'launcher CPU'} {fmt_spread(cpu)}; {payload / wall / 1e6:.0f} MB/s, "
                    f"{lines / wall / 1e6:.2f} M lines/s; every line once, whole, in order: "
                    + ("yes" if ok else "NO: " + json.dumps([s["check"] for s in stats])))
            return wall, statistics.median(cpu), ok, text

        summary_of = {}
        for name, stats in results.items():
            summary_of[name] = describe(stats)
            self.table.details.append(f"tee {name}, logs on {main_root}: {summary_of[name][3]}")
        for name, stats in (disk or {}).items():
            self.table.details.append(f"tee {name}, logs on disk ({self.disk_tmp}): {describe(stats)[3]}")
        wall, cpu, ok, _ = summary_of["ours"]
        size = "1 GB" if payload == 1_000_000_000 else f"{payload / 1e6:.0f} MB"
        label = f"tee {size}, -t 3" + (", console a file" if self.args.tee_console == "file" else "")
        mbps = payload / wall / 1e6
        ours_text = f"{mbps:.0f} MB/s, {lines / wall / 1e6:.2f} M lines/s, launcher CPU {cpu:.2f} s"
        if not ok:
            ours_text += " (LINES LOST OR BROKEN)"
        fwall = summary_of["floor"][0]
        self.table.add(f"{label}, vs floor", ours_text, f"tee_floor {payload / fwall / 1e6:.0f} MB/s",
                       f"{wall / fwall:.2f}x the floor's time", "≥ 500 MB/s", ok and mbps >= 500)
        if "torchrun" in summary_of:
            rwall, rcpu, rok, _ = summary_of["torchrun"]
            ref_text = f"torchrun {payload / rwall / 1e6:.0f} MB/s, {lines / rwall / 1e6:.2f} M lines/s, CPU {rcpu:.2f} s"
            self.table.add(f"{label}, vs torchrun", f"{mbps:.0f} MB/s", ref_text, f"{rwall / wall:.1f}x faster",
                           "≥ 5x", ok and rok and rwall / wall >= 5)
        for name, _ in self.tee_also():
            owall, ocpu, ook, _ = summary_of[name]
            self.table.add(f"{label}, vs elastic-run {name}", ours_text,
                           f"{name} {payload / owall / 1e6:.0f} MB/s, launcher CPU {ocpu:.2f} s, "
                           f"{owall / fwall:.2f}x the floor's time", f"{owall / wall:.2f}x faster", "—", None)

    def tee_also(self):
        """Other elastic-run builds (--tee-also NAME=PATH) timed in the same rounds as ours."""
        return [tuple(item.split("=", 1)) for item in self.args.tee_also]

    def measure_tee(self, log_root, lines, width, runs, torchrun_runs, with_torchrun):
        """Runs ours, the floor and (maybe) torchrun in alternating rounds, each
        piped into line_check; returns {name: [proc_stats dict + "check"]}."""
        prefix = "[default0]:"
        log_dir = os.path.join(log_root, f"elastic-bench-tee-{os.getpid()}")
        writer = [self.tool("line_writer"), str(lines), str(width)]
        flags = ["-t", "3", "--log-dir", log_dir, "--log-line-prefix-template", "[${role_name}${local_rank}]:"]
        commands = {
            "ours": (self.elastic_run(1, *flags, *writer), runs),
            **{name: ([path, "--nproc-per-node", "1", "--no-python", *flags, *writer], runs)
               for name, path in self.tee_also()},
            # The floor: the same writer, through tee_floor (log file + prefixed lines).
            "floor": (["sh", "-c",
                       shlex.join(writer) + " | " + shlex.join([self.tool("tee_floor"), os.path.join(log_dir, "floor.log"), prefix])],
                      runs),
        }
        if with_torchrun and self.have_torchrun():
            commands["torchrun"] = (self.torchrun_cmd(1, "-t", "3", "--log_dir", log_dir, *writer), torchrun_runs)
        results = {name: [] for name in commands}
        for round_index in range(max(count for _, count in commands.values())):
            # The order flips every round, so neither side always goes first.
            names = list(commands) if round_index % 2 == 0 else list(reversed(commands))
            for name in names:
                command, count = commands[name]
                if round_index >= count:
                    continue
                shutil.rmtree(log_dir, ignore_errors=True)
                os.makedirs(log_dir)
                stats_file = os.path.join(self.tmp, "stats.json")
                check_cmd = shlex.join([self.tool("line_check"), prefix, str(lines), str(width)])
                run_cmd = shlex.join([self.tool("proc_stats"), stats_file] + command) + " 2>/dev/null"
                if self.args.tee_console == "file":
                    # The console is a file (written in place, no console thread), checked afterwards.
                    console = os.path.join(log_root, f"elastic-bench-console-{os.getpid()}.txt")
                    pipeline = f"{run_cmd} > {shlex.quote(console)}; {check_cmd} < {shlex.quote(console)}; rm -f {shlex.quote(console)}"
                else:
                    pipeline = f"{run_cmd} | {check_cmd}"
                check = subprocess.run(pipeline, shell=True, capture_output=True, text=True)
                with open(stats_file) as fp:
                    stats = json.load(fp)
                stats["check"] = json.loads(check.stdout)
                stats["floor"] = name == "floor"
                results[name].append(stats)
        shutil.rmtree(log_dir, ignore_errors=True)
        return results

    # 4. record on the happy path
    def record(self):
        log("record: hello-world with and without elastic::record")
        times = hyperfine({"plain": self.tool("hello_plain"), "linked": self.tool("hello_linked"),
                           "record": self.tool("hello_record")},
                          runs=self.reps(100, 20), rounds=self.reps(10, 2), warmup=20)
        plain, rec = statistics.median(times["plain"]), statistics.median(times["record"])
        linked = statistics.median(times["linked"])
        self.table.details.append(
            f"record whole-process: plain {fmt_spread(times['plain'])}; recorded {fmt_spread(times['record'])}; "
            f"record linked but not run {fmt_spread(times['linked'])}, so of the {fmt_time(rec - plain)} added, "
            f"{fmt_time(linked - plain)} is loading the libraries and {fmt_time(rec - linked)} is record running")
        self.table.add("record, whole process (hello world)", fmt_time(rec), f"without record {fmt_time(plain)}",
                       f"{rec / plain:.3f}x", "≤ 1.10x", rec / plain <= 1.10)
        self.table.add("record running, whole process (hello world)", fmt_time(rec),
                       f"record linked, not run {fmt_time(linked)}", f"{rec / linked:.3f}x", "—", None)
        bench = self.google_benchmark(self.tool("record_bench"), self.reps(10, 3))
        direct = bench["BM_direct_call"]
        for name, label in (("BM_record_call", "record(fn)(args)"), ("BM_record_main", "ELASTIC_RECORD_MAIN path")):
            ns = bench[name]
            self.table.details.append(f"record in-process {label}: {fmt_spread(ns, unit=lambda v: f'{v:.1f} ns')}")
            self.table.add(f"record in-process, {label}", f"{statistics.median(ns):.1f} ns",
                           f"direct call {statistics.median(direct):.1f} ns",
                           f"+{statistics.median(ns) - statistics.median(direct):.1f} ns", "—", None)

    # 4c. throw + catch: without the library, linked but record never run, inside record
    def throw(self):
        log("throw: one throw + catch without the library, with it linked, inside record")
        variants = {"plain": "throw_plain", "linked": "throw_linked", "recorded": "throw_recorded"}
        ns = {name: [] for name in variants}
        rounds = self.reps(10, 2)
        for round_index in range(rounds):
            # Alternating, the order flipped every round, so load hits all three alike.
            names = list(variants) if round_index % 2 == 0 else list(reversed(variants))
            for name in names:
                out = subprocess.run([self.tool(variants[name])], capture_output=True, text=True, check=True).stdout
                ns[name].extend(json.loads(out)["ns_per_throw"])
        unit = lambda v: f"{v:.0f} ns"
        plain, linked, recorded = (statistics.median(ns[name]) for name in ("plain", "linked", "recorded"))
        self.table.details.append(f"throw + catch: without the library {fmt_spread(ns['plain'], unit=unit)}; "
                                  f"linked, record never run {fmt_spread(ns['linked'], unit=unit)}; "
                                  f"inside record {fmt_spread(ns['recorded'], unit=unit)}")
        self.table.add("throw + catch, library linked, record never run", unit(linked),
                       f"without the library {unit(plain)}", f"{linked / plain:.2f}x", "≤ 1.5x", linked / plain <= 1.5)
        self.table.add("throw + catch inside record (throw-site trace)", unit(recorded),
                       f"without the library {unit(plain)}", f"{recorded / plain:.2f}x", "—", None)

    def google_benchmark(self, binary, repetitions, env=None, extra=()):
        """{benchmark name: [real time of each repetition, in the benchmark's unit]}"""
        out = os.path.join(self.tmp, "gbench.json")
        subprocess.run([binary, f"--benchmark_repetitions={repetitions}", "--benchmark_out_format=json",
                        f"--benchmark_out={out}", *extra], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))
        with open(out) as fp:
            data = json.load(fp)
        result = {}
        for entry in data["benchmarks"]:
            if entry.get("run_type") == "iteration":
                result.setdefault(entry["run_name"], []).append(entry["real_time"])
        return result

    # 4b. crash path: fault to complete error file
    def crash(self):
        timer = self.tool("crash_timer")
        if not os.access(timer, os.X_OK):
            return self.missing("crash path", "crash capture not available in this build (bench/src/crash_timer.cpp)")
        log("crash: fault to complete error file")
        to_file, to_lines, to_exit, unreadable, with_lines = [], [], [], 0, 0
        for _ in range(self.reps(50, 10)):
            result = subprocess.run([timer], capture_output=True, text=True)
            data = json.loads(result.stdout)
            to_file.append(data["fault_to_file_s"])
            to_lines.append(data["fault_to_lines_s"])
            to_exit.append(data["fault_to_exit_s"])
            unreadable += not data["file_readable"] or data["signal"] != 11
            with_lines += data["file_has_lines"]
        self.table.details.append(f"crash path (30 frames deep), SIGSEGV to complete error file: {fmt_spread(to_file)}; "
                                  f"to the record with source file:line ({with_lines}/{len(to_lines)} runs): "
                                  f"{fmt_spread(to_lines)}; "
                                  f"to the parent seeing the worker die by SIGSEGV: {fmt_spread(to_exit)}")
        throw_timer = self.tool("throw_record_timer")
        if os.access(throw_timer, os.X_OK):
            result = subprocess.run([throw_timer, str(self.reps(50, 10))], capture_output=True, text=True)
            data = json.loads(result.stdout)
            self.table.details.append(f"exception path (30 frames deep), throw to complete record with file:line "
                                      f"(lines: {data['file_has_lines']}): {fmt_spread(data['throw_to_record_s'])}")
            self.table.add("exception path: throw to record with file:line",
                           fmt_time(statistics.median(data["throw_to_record_s"])), "—", "—", "—", None)
        if unreadable:
            self.table.notes.append(f"crash path: {unreadable} runs left no readable error file or no SIGSEGV exit.")
        self.table.add("crash path: SIGSEGV to complete error file", fmt_time(statistics.median(to_file)),
                       "torchrun: no file, no trace", "—", "—", None)

    # 5. reading failures
    def read(self):
        log("read: ProcessFailure + ChildFailedError.format_msg, ours vs PyTorch")
        error_dir = os.path.join(self.tmp, "error-files")
        subprocess.run([self.python, os.path.join(ROOT, "bench", "python", "make_error_files.py"), error_dir, "10000"],
                       check=True)
        env = {"ELASTIC_BENCH_ERROR_DIR": error_dir}
        # Same files, same summary: checked byte for byte before timing.
        ours_summary = subprocess.run([self.tool("read_failures_bench"), "--summary", "64"], capture_output=True,
                                      check=True, env=dict(os.environ, **env)).stdout
        ref_summary = subprocess.run([self.python, os.path.join(ROOT, "bench", "python", "read_failures.py"), error_dir,
                                      "64", "1", "--summary"], capture_output=True, check=True).stdout
        if ours_summary != ref_summary:
            self.table.notes.append("read: our summary for 64 files differs from PyTorch's.")
        bench = self.google_benchmark(self.tool("read_failures_bench"), self.reps(5, 3), env=env,
                                      extra=["--benchmark_min_time=0.2"])
        for n in (1, 64, 10000):
            ours = [t * 1e-6 for t in bench[f"BM_read_failures/{n}"]]
            reps = {1: 200, 64: 30, 10000: 3}[n] if not self.quick else 3
            result = subprocess.run([self.python, os.path.join(ROOT, "bench", "python", "read_failures.py"), error_dir,
                                     str(n), str(reps)], capture_output=True, text=True, check=True)
            ref = json.loads(result.stdout)["times_s"]
            self.table.details.append(f"read N={n}: ours {fmt_spread(ours)}; PyTorch {fmt_spread(ref)}")
            self.table.add(f"read {n} error file{'s' if n > 1 else ''} + summary", fmt_time(statistics.median(ours)),
                           f"PyTorch {fmt_time(statistics.median(ref))}",
                           f"{statistics.median(ref) / statistics.median(ours):.0f}x faster", "—", None)
        shutil.rmtree(error_dir, ignore_errors=True)

    # 6. peak RSS with 64 workers
    def memory(self):
        log("memory: peak RSS of the launcher with 64 workers of /bin/true")
        if not self.have_launcher():
            return self.missing("memory", f"{self.launcher} not built")
        ours = gnu_time_maxrss(self.elastic_run(64, "/bin/true"), self.reps(10, 3))
        floor = gnu_time_maxrss([self.tool("spawn_floor"), "64", "/bin/true"], self.reps(10, 3))
        kib = lambda v: f"{v / 1024:.1f} MiB"
        self.table.details.append(f"memory: ours {fmt_spread(ours, unit=kib)}; floor program {fmt_spread(floor, unit=kib)}")
        if self.have_torchrun():
            ref = gnu_time_maxrss(self.torchrun_cmd(64, "/bin/true"), self.reps(3, 1))
            self.table.details.append(f"memory: torchrun {fmt_spread(ref, unit=kib)}")
            self.table.add("peak RSS, 64 workers", kib(statistics.median(ours)), f"torchrun {kib(statistics.median(ref))}",
                           f"{statistics.median(ref) / statistics.median(ours):.0f}x less", "—", None)
        else:
            self.table.add("peak RSS, 64 workers", kib(statistics.median(ours)), "", "", "—", None)


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as fp:
        for line in fp:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    debian = open("/etc/debian_version").read().strip() if os.path.exists("/etc/debian_version") else "?"
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Debian {debian}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--quick", action="store_true", help="few repetitions, to try the suite out")
    parser.add_argument("--only", default="launch,failure,tee,record,throw,crash,read,memory")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    parser.add_argument("--tee-also", action="append", default=[], metavar="NAME=PATH",
                        help="another elastic-run (an older build) timed in the same tee rounds")
    parser.add_argument("--tee-lines", type=int, default=0, help="lines of 100 bytes for the tee figure")
    parser.add_argument("--tee-runs", type=int, default=0, help="runs of each side of the tee figure")
    parser.add_argument("--tee-console", choices=["pipe", "file"], default="pipe",
                        help="the launcher's stdout: a pipe into line_check (default) or a file checked afterwards")
    args = parser.parse_args()

    bench = Bench(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    try:
        for figure in args.only.split(","):
            figure_start = time.monotonic()
            getattr(bench, figure)()
            log(f"  ({figure}: {time.monotonic() - figure_start:.0f} s)")
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
        shutil.rmtree(bench.disk_tmp, ignore_errors=True)
    load_after = os.getloadavg()
    if RETRIES:
        bench.table.notes.append(f"hyperfine rounds run again after a failed run: {len(RETRIES)} "
                                 f"({'; '.join(sorted(set(RETRIES)))})")
    elapsed = datetime.datetime.now(datetime.timezone.utc) - started

    torch_version = subprocess.run([bench.python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                   text=True).stdout.strip() or "not found"
    package = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "python3-torch"], capture_output=True,
                             text=True).stdout.strip()
    if package:
        torch_version = f"{torch_version}, Debian python3-torch {package}"
    hyperfine_version = subprocess.run(["hyperfine", "--version"], capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        "# Benchmark results",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `bench/run.sh{' --quick' if args.quick else ''}` in "
        f"{elapsed.total_seconds():.0f} s on {machine()}.",
        f"Load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after. "
        f"References: torchrun from torch {torch_version} (`{bench.torchrun}`, `--monitor_interval 0.1`), "
        f"{hyperfine_version}. Medians over all repetitions; ratios are between medians of the same run.",
        "",
        bench.table.markdown(),
        "",
        "## Spread (median, interquartile range, number of runs)",
        "",
        *[f"- {line}" for line in bench.table.details],
        "",
        *(["## Notes", "", *[f"- {note}" for note in bench.table.notes], ""] if bench.table.notes else []),
    ])
    print(text)
    with open(args.out, "w") as fp:
        fp.write(text + "\n")
    log(f"written to {args.out}")


if __name__ == "__main__":
    main()
