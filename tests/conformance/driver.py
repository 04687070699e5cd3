#!/usr/bin/python3
"""Differential conformance of our error files and summaries against PyTorch's.

For each case of the corpus (cases.py) this builds the same failures map twice:
with PyTorch's own ProcessFailure/ChildFailedError, in this process, and with
ours, through the `summarize` tool. It compares every field (message, timestamp,
signal_name(), timestamp_isoformat(), error_file, error_file_data), the root
cause and the whole summary, byte for byte. Other groups exchange real files in
both directions and run the real torchrun on our workers.

    /usr/bin/python3 driver.py --ours SUMMARIZE --worker RECORD_WORKER --group NAME
    /usr/bin/python3 driver.py ... --list          # groups and cases
    /usr/bin/python3 driver.py ... --case SUBSTR   # only matching cases

Run with Debian's /usr/bin/python3 (python3-torch). Exit status 0 when every
case agrees or shows exactly its documented difference.
"""
import argparse
import difflib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cases as corpus  # noqa: E402
from cases import Case, Failure, nested, new, mast, dumps, traceback_of  # noqa: E402

try:
    import torch  # noqa: E402
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure, record  # noqa: E402
except ImportError as e:
    sys.exit(f"the conformance suite compares with PyTorch: install Debian's python3-torch "
             f"and run with /usr/bin/python3 ({e})")

PYTHON = "/usr/bin/python3"
PYTHON_WORKER = os.path.join(HERE, "python_worker.py")
TORCHRUN = os.path.join(HERE, "torchrun.py")
NOT_AVAILABLE = "<N/A>"


class Raised:
    """An exception PyTorch raised, kept as a value so results can be compared."""

    def __init__(self, error):
        self.type = type(error).__name__
        self.text = str(error)

    def __repr__(self):
        return f"<raised {self.type}: {self.text[:200]}>"


def short(value, limit=300):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


# ---------------------------------------------------------------- running both sides

def materialize(case, directory):
    """Writes the case's error files under `directory`; returns their paths in case order."""
    paths = []
    for f in case.failures:
        if f.path is not None:
            paths.append(f.path)
            continue
        folder = os.path.join(directory, f"rank{f.rank}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f.filename)
        kind = f.file
        if isinstance(kind, bytes):
            with open(path, "wb") as out:
                out.write(kind)
        elif kind == corpus.MISSING:
            pass
        elif kind == corpus.DIRECTORY:
            os.mkdir(path)
        elif kind == corpus.FIFO:
            os.mkfifo(path)
        elif kind == corpus.SYMLINK_LOOP:
            os.symlink(path, path)
        elif kind == corpus.DANGLING:
            os.symlink(os.path.join(folder, "nowhere"), path)
        elif kind == corpus.DEV_ZERO:
            os.symlink("/dev/zero", path)
        elif kind == corpus.EMPTY_PATH:
            path = ""
        elif kind == corpus.SYMLINK_TO_FILE:
            with open(path + ".target", "wb") as out:
                out.write(corpus.nested(callstack="RuntimeError: via a link\n"))
            os.symlink(path + ".target", path)
        elif kind == corpus.NOT_AVAILABLE_PATH:
            path = NOT_AVAILABLE  # relative: nothing by that name in the case directory
        else:
            raise ValueError(f"unknown file kind {kind!r}")
        paths.append(path)
    return paths


def run_torch(case, paths, process_failure=ProcessFailure, order=None):
    """PyTorch's view of the case: per-failure fields (or what raised), root rank, summary."""
    indices = list(range(len(case.failures)))
    if order == "rank":
        indices.sort(key=lambda i: case.failures[i].rank)
    rows, failures = [], {}
    for i in indices:
        f, path = case.failures[i], paths[i]
        row = {"rank": f.rank}
        rows.append(row)
        try:
            pf = process_failure(local_rank=f.local_rank, pid=f.pid, exitcode=f.exitcode, error_file=path)
        except BaseException as e:  # RecursionError included
            row.update(ok=False, error=Raised(e))
            continue
        row.update(ok=True, message=pf.message, timestamp=pf.timestamp, error_file=pf.error_file,
                   error_file_data=pf.error_file_data)
        for name in ("signal_name", "timestamp_isoformat"):
            try:
                row[name] = getattr(pf, name)()
            except Exception as e:
                row[name] = Raised(e)
        failures[f.rank] = pf
    result = {"failures": rows}
    if len(failures) == len(rows):
        try:
            error = ChildFailedError(case.title, failures)
            result["summary"] = str(error)
            result["root_rank"] = error.get_first_failure()[0]
        except Exception as e:
            result["summary"] = Raised(e)
    return result


def run_ours(tool, case, paths):
    spec = {"name": case.title, "failures": [
        {"rank": f.rank, "local_rank": f.local_rank, "pid": f.pid, "exitcode": f.exitcode, "error_file": p}
        for f, p in zip(case.failures, paths)]}
    if case.enrich is not None:
        spec["enrich"] = case.enrich
    proc = subprocess.run([tool, "-"], input=json.dumps(spec).encode(), capture_output=True, timeout=120,
                          env=dict(os.environ, ELASTIC_LOG_LEVEL="off"))
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} exited with {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    result = json.loads(proc.stdout)
    if result["fqdn"] != socket_fqdn():
        raise RuntimeError(f"host names differ: ours {result['fqdn']!r}, Python {socket_fqdn()!r}")
    return result


def socket_fqdn():
    import socket
    return socket.getfqdn()


FIELDS = ("message", "timestamp", "signal_name", "timestamp_isoformat", "error_file", "error_file_data")


def same(a, b):
    if isinstance(a, Raised) or isinstance(b, Raised):
        return False
    return type(a) is type(b) and a == b or (isinstance(a, (dict, list)) and a == b)


def summary_diff(expected, actual):
    lines = difflib.unified_diff(expected.split("\n"), actual.split("\n"), "PyTorch", "ours", lineterm="", n=1)
    return "\n".join(list(lines)[:40])


def compare(torch_result, ours, check_summary=True):
    """Problems (empty when equal) between PyTorch's result and ours."""
    problems = []
    if len(torch_result["failures"]) != len(ours["failures"]):
        return ["different number of failures"]
    for t, o in zip(torch_result["failures"], ours["failures"]):
        rank = t["rank"]
        if t["rank"] != o["rank"]:
            problems.append(f"failure order differs: PyTorch rank {t['rank']}, ours rank {o['rank']}")
            continue
        if not t["ok"]:
            if o["ok"]:
                problems.append(f"rank {rank}: PyTorch cannot read the file ({t['error']}); ours read it")
            continue
        if not o["ok"]:
            problems.append(f"rank {rank}: PyTorch reads the file; ours refused it: {o['error']}")
            continue
        for name in FIELDS:
            if not same(t[name], o[name]):
                problems.append(f"rank {rank}: {name}: PyTorch {short(t[name])} != ours {short(o[name])}")
    if not check_summary:
        return problems
    if "summary" in torch_result:
        if isinstance(torch_result["summary"], Raised):
            problems.append(f"PyTorch's summary raised {torch_result['summary']}")
        elif "summary" not in ours:
            problems.append("ours gave no summary")
        else:
            if torch_result["root_rank"] != ours["root_rank"]:
                problems.append(f"root cause: PyTorch rank {torch_result['root_rank']}, ours {ours['root_rank']}")
            if torch_result["summary"] != ours["summary"]:
                problems.append("summary differs:\n" + summary_diff(torch_result["summary"], ours["summary"]))
            # what() is a C string: the summary up to an embedded NUL, if any.
            if ours["what"] != ours["summary"].split("\0")[0]:
                problems.append("what() is not the summary")
    elif "summary" in ours and not problems:
        problems.append("ours gave a summary where PyTorch could not")
    return problems


def refusals_are_clear(ours, paths):
    """A file we refuse is named in the error, and the summary made anyway shows it."""
    problems = []
    for o, path in zip(ours["failures"], paths):
        if o["ok"]:
            continue
        if path not in o["error"] or len(o["error"]) <= len(path) + 25:
            problems.append(f"rank {o['rank']}: unclear error {o['error']!r}")
        if path not in ours.get("described_summary", ""):
            problems.append(f"rank {o['rank']}: the summary made anyway does not show {path}")
    return problems


# ---------------------------------------------------------------- documented differences

class NewerSignalNames(ProcessFailure):
    """ProcessFailure as newer PyTorch names signals: "<N/A>" where 1.13 raises ValueError."""

    def signal_name(self):
        try:
            return super().signal_name()
        except ValueError:
            return NOT_AVAILABLE


def torch_raised_somewhere(result):
    if isinstance(result.get("summary"), Raised):
        return True
    return any(not row["ok"] or any(isinstance(row.get(k), Raised) for k in FIELDS) for row in result["failures"])


def check_unnamed_signal(ctx, torch_result, ours):
    problems = []
    if not torch_raised_somewhere(torch_result):
        problems.append("PyTorch 1.13 no longer raises for this signal: the difference is gone")
    problems += compare(*ctx.pair(process_failure=NewerSignalNames))
    return problems


def check_rank_order(ctx, torch_result, ours):
    problems = []
    if torch_result.get("summary") == ours.get("summary"):
        problems.append("summaries are equal: the difference is gone")
    by_rank = dict(ours, failures=sorted(ours["failures"], key=lambda row: row["rank"]))
    problems += compare(ctx.torch(order="rank"), by_rank)
    return problems


def check_hostile_value(ctx, torch_result, ours):
    problems = []
    if not torch_raised_somewhere(torch_result):
        problems.append("PyTorch formats this without error: the difference is gone")
    problems += refusals_are_clear(ours, ctx.paths)
    if "described_summary" not in ours:
        problems.append("no summary from ours")
    for t, o in zip(torch_result["failures"], ours["failures"]):
        if not o["ok"]:
            continue
        # Read by us too: then it renders, with the time as Python would show it in
        # UTC where Python can, else the raw number.
        ts = o["timestamp"]
        if t.get("ok") and t["timestamp"] != ts:
            problems.append(f"rank {o['rank']}: timestamp PyTorch {t['timestamp']} != ours {ts}")
        try:
            expected = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d_%H:%M:%S")
            expected = f"{int(expected[:expected.index('-')]):04d}" + expected[expected.index('-'):]
        except (OverflowError, ValueError, OSError):
            expected = str(ts)
        if o["timestamp_isoformat"] != expected:
            problems.append(f"rank {o['rank']}: time {o['timestamp_isoformat']!r}, expected {expected!r}")
        if "summary" not in ours or f"  time      : {expected}\n" not in ours["summary"]:
            problems.append(f"rank {o['rank']}: the summary does not show time {expected!r}")
    return problems


def check_strict_json(ctx, torch_result, ours):
    problems = []
    if not all(row["ok"] for row in torch_result["failures"]):
        problems.append("PyTorch refuses this file too: the difference is gone")
    if all(o["ok"] for o in ours["failures"]):
        problems.append("ours read the file")
    problems += refusals_are_clear(ours, ctx.paths)
    return problems


def check_bom(ctx, torch_result, ours):
    problems = []
    if all(row["ok"] for row in torch_result["failures"]):
        problems.append("PyTorch reads a file with a byte order mark: the difference is gone")
    # Ours must read it as PyTorch reads the same file without the mark.
    originals = {}
    for path in ctx.paths:
        with open(path, "rb") as fp:
            originals[path] = fp.read()
        with open(path, "wb") as fp:
            fp.write(originals[path].removeprefix(b"\xef\xbb\xbf"))
    try:
        problems += compare(ctx.torch(), ours)
    finally:
        for path, data in originals.items():
            with open(path, "wb") as fp:
                fp.write(data)
    return problems


ROOT_HEADER = "Root Cause (first observed failure):\n"


def check_enrich(ctx, torch_result, ours):
    """PyTorch 1.13 has no hook: newer PyTorch passes the rendered root failure of a
    signal through the handler's maybe_enrich_signal_failure_message after the width
    is measured. Our handler appends case.enrich + " (<error_file>)"."""
    problems = compare(torch_result, ours, check_summary=False)
    summary = torch_result["summary"]
    root = next(row for row in torch_result["failures"] if row["rank"] == torch_result["root_rank"])
    failure = next(f for f in ctx.case.failures if f.rank == torch_result["root_rank"])
    if failure.exitcode >= 0:
        return problems + ["the root cause is not a signal: use expect='agree'"]
    border = summary[summary.rindex("\n") + 1:]
    start = summary.index(ROOT_HEADER) + len(ROOT_HEADER)
    end = len(summary) - len(border) - 1
    expected = summary[:end] + ctx.case.enrich + f" ({root['error_file']})" + summary[end:]
    if ours.get("summary") != expected:
        problems.append("enriched summary differs:\n" + summary_diff(expected, ours.get("summary", "")))
    if start >= end:
        problems.append("no root failure found in PyTorch's summary")
    return problems


class Difference:
    def __init__(self, doc, check):
        self.doc = doc
        self.check = check


DIFFERENCES = {
    "unnamed-signal": Difference(
        "A signal number Python has no name for (0, 32, 33, 35-63, > 64): PyTorch 1.13 raises "
        "ValueError; newer PyTorch and we give '<N/A>'. Compared with 1.13 whose signal_name() "
        "answers '<N/A>' instead of raising.", check_unnamed_signal),
    "rank-order": Difference(
        "PyTorch numbers failures (and breaks timestamp ties) in the dict's insertion order; our "
        "map is ordered by global rank. Launchers insert in rank order, where both agree.", check_rank_order),
    "hostile-value": Difference(
        "PyTorch 1.13 reads the file, then crashes while formatting (non-string traceback, time no "
        "calendar shows). We refuse such a file with an error naming it, or show the raw timestamp; "
        "a summary is always printed.", check_hostile_value),
    "strict-json": Difference(
        "Python's json and int() accept more than JSON: NaN/Infinity, lone surrogates, nesting deeper "
        "than 512, non-ASCII digits and spaces in timestamps. We refuse such a file with a clear error.",
        check_strict_json),
    "size-limit": Difference(
        "PyTorch reads an error file of any size; we refuse one over 64 MiB (ErrorFileLimits::max_bytes) "
        "with a clear error, so a runaway writer cannot exhaust the launcher's memory.", check_strict_json),
    "bom": Difference(
        "Python's json refuses a UTF-8 byte order mark; we skip it and read the file.", check_bom),
    "enrich": Difference(
        "maybe_enrich_signal_failure_message (newer PyTorch; 1.13 has no hook) is applied to the rendered "
        "root failure of a signal, after the width is measured.", check_enrich),
}


# ---------------------------------------------------------------- checking one case

class Context:
    def __init__(self, tool, case, paths):
        self.tool = tool
        self.case = case
        self.paths = paths

    def torch(self, **options):
        return run_torch(self.case, self.paths, **options)

    def pair(self, **options):
        return run_pair(self.tool, self.case, self.paths, **options)


def run_pair(tool, case, paths, **torch_options):
    """Both sides; retried while a missing file's "now" fell in different seconds."""
    for _ in range(5):
        ours = run_ours(tool, case, paths)
        torch_result = run_torch(case, paths, **torch_options)
        now_rows = [(t, o) for t, o in zip(torch_result["failures"], ours["failures"])
                    if t["ok"] and o["ok"] and t["error_file"] == NOT_AVAILABLE]
        if all(t["timestamp"] == o["timestamp"] for t, o in now_rows):
            break
    return torch_result, ours


def set_timezone(tz):
    os.environ["TZ"] = tz
    time.tzset()


def check_case(tool, case, workdir):
    """Problems with one case (empty list: it conforms)."""
    directory = tempfile.mkdtemp(prefix=re.sub(r"[^A-Za-z0-9_-]", "_", case.name)[:40] + "_", dir=workdir)
    set_timezone(case.tz)
    old_cwd = os.getcwd()
    os.chdir(directory)  # relative paths such as "<N/A>" resolve inside the case
    try:
        if case.prepare is not None:
            case.prepare(case, directory)
        paths = materialize(case, directory)
        torch_result, ours = run_pair(tool, case, paths)
        if case.expect == "agree":
            problems = compare(torch_result, ours) + refusals_are_clear(ours, paths)
        else:
            problems = DIFFERENCES[case.expect].check(Context(tool, case, paths), torch_result, ours)
        for extra in case.extra_checks:
            problems += extra(case, torch_result, ours)
        return problems
    finally:
        os.chdir(old_cwd)
        set_timezone("UTC")


# ---------------------------------------------------------------- files exchanged by real workers

OPTIONS = types.SimpleNamespace(ours=None, worker=None, elastic_run=None)


def worker_command(side, *args):
    if side == "ours":
        return [OPTIONS.worker, *args]
    if side == "pytorch":
        return [PYTHON, PYTHON_WORKER, *args]
    raise ValueError(side)


def run_worker(command, error_file, cwd=None):
    """Runs a worker with TORCHELASTIC_ERROR_FILE; returns (exit code, pid, stderr)."""
    env = dict(os.environ, TORCHELASTIC_ERROR_FILE=error_file, ELASTIC_LOG_LEVEL="off")
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, proc.pid, err.decode(errors="replace")


def prepare_workers(case, directory):
    for f in case.failures:
        if f.worker is None:
            continue
        path = os.path.join(directory, f"rank{f.rank}", f.filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        start = int(time.time())
        f.exitcode, f.pid, _ = run_worker(worker_command(*f.worker), path)
        f.path = path
        f.written_between = (start, int(time.time()))


def check_written_like_pytorch(case, torch_result, ours):
    """Our files: the bytes PyTorch's json.dump writes, in PyTorch's shape, and the
    traceback shown in a summary carries the '<type>: <what()>' line."""
    problems = []
    for f in case.failures:
        if f.worker is None or f.worker[0] != "ours" or not os.path.isfile(f.path):
            continue
        with open(f.path, "rb") as fp:
            raw = fp.read()
        data = json.loads(raw)
        if json.dumps(data).encode() != raw:
            problems.append(f"rank {f.rank}: not the bytes json.dump writes: {raw[:200]!r}")
        body = data.get("message")
        if list(data) != ["message"] or not isinstance(body, dict):
            problems.append(f"rank {f.rank}: not the nested format: {short(data)}")
            continue
        keys = ["message", "extraInfo"] + (["errorCode"] if "errorCode" in body else [])
        # extraInfo is string -> string for downstream consumers: PyTorch's two keys
        # first, in its order; more (a crash record's) may follow.
        extra = body.get("extraInfo")
        if list(body) != keys or not isinstance(extra, dict) or list(extra)[:2] != ["py_callstack", "timestamp"]:
            problems.append(f"rank {f.rank}: keys differ from PyTorch's: {short(data)}")
            continue
        if not all(isinstance(v, str) for v in extra.values()):
            problems.append(f"rank {f.rank}: extraInfo values are not all strings: {short(extra)}")
        stamp = body["extraInfo"]["timestamp"]
        # Python's clock: never before the worker started (time(2) could be, by a tick).
        if not (isinstance(stamp, str) and stamp.isdigit() and
                f.written_between[0] <= int(stamp) <= f.written_between[1]):
            problems.append(f"rank {f.rank}: timestamp {stamp!r} is not the time of writing")
        if body["message"] not in body["extraInfo"]["py_callstack"].split("\n"):
            problems.append(f"rank {f.rank}: py_callstack lacks the line {body['message']!r}")
    return problems


def expect_in_summary(*texts):
    def check(case, torch_result, ours):
        summary = ours.get("summary", "")
        return [f"summary lacks {text!r}" for text in texts if text not in summary]
    return check


def written_by_ours():
    g = "written-by-ours"
    modes = [
        ("throw", ["SentinelError: foobar"]),
        ("nested", ["std::runtime_error: optimizer setup failed", "learning rate must be positive"]),
        ("throw_int", ["int: 42"]),
        ("throw_cstr", ["const char*: plain C string"]),
        ("throw_struct", ["NotAnException"]),
        # Fatal signals: "Signal N (NAME) received by PID" without crash capture, the
        # crash record's "Fatal signal N (NAME) ..." with it; either way PyTorch agrees.
        ("signal 11", ["11 (SIGSEGV)"]),
        ("signal 6", ["6 (SIGABRT)"]),
        ("signal 8", ["8 (SIGFPE)"]),
        ("signal 7", ["7 (SIGBUS)"]),
    ]
    checks = [check_written_like_pytorch]
    result = [Case(g, mode.replace(" ", "-"), [Failure(0, worker=("ours", *mode.split()))],
                   extra_checks=checks + [expect_in_summary(*texts)]) for mode, texts in modes]
    result.append(Case(g, "two-ranks", [Failure(0, worker=("ours", "throw")), Failure(1, worker=("ours", "nested"))],
                       extra_checks=checks + [expect_in_summary("SentinelError: foobar")]))
    result.append(Case(g, "mixed-with-pytorch-worker", [Failure(0, worker=("pytorch", "raise")),
                                                        Failure(1, worker=("ours", "throw"))],
                       extra_checks=checks + [expect_in_summary("RuntimeError: foobar", "SentinelError: foobar")]))
    result.append(Case(g, "signal-without-file", [Failure(0, worker=("ours", "signal", "9"))],
                       extra_checks=[expect_in_summary("Signal 9 (SIGKILL) received by PID")]))
    return result


def written_by_pytorch():
    g = "written-by-pytorch"
    modes = [
        ("raise", ["RuntimeError: foobar", "Traceback (most recent call last):"]),
        ("chained", ["RuntimeError: optimizer setup failed", "ValueError: learning rate must be positive",
                     "The above exception was the direct cause"]),
        ("unicode", ["ValueError: Ошибка 失敗 🔥", "  second line"]),
        ("key_error", ["KeyError: 'lr'"]),
        ("custom", ["SentinelError: foobar"]),
    ]
    result = [Case(g, mode, [Failure(0, worker=("pytorch", mode))], extra_checks=[expect_in_summary(*texts)])
              for mode, texts in modes]
    result.append(Case(g, "four-ranks", [Failure(r, worker=("pytorch", m)) for r, m in
                                         enumerate(["raise", "chained", "unicode", "custom"])]))
    result.append(Case(g, "signal-without-file", [Failure(0, worker=("pytorch", "signal", "15"))],
                       extra_checks=[expect_in_summary("Signal 15 (SIGTERM) received by PID")]))
    return result


# ---- copy-up: a parent's dump_error_file, ours against PyTorch's, on the same child file

def copy_up_sources(directory):
    """name -> path of a child error file."""
    sources = {}

    def put(name, data):
        path = os.path.join(directory, f"src-{name}.json")
        with open(path, "wb") as fp:
            fp.write(data)
        sources[name] = path

    for side, mode in [("pytorch", "raise"), ("pytorch", "unicode"), ("ours", "throw"), ("ours", "nested")]:
        path = os.path.join(directory, f"src-{side}-{mode}.json")
        run_worker(worker_command(side, mode), path)
        sources[f"{side}-{mode}"] = path
    put("new", new("a message\nwith two lines", 10))
    put("mast", mast("mast message", "11"))
    put("nested-errorcode", nested(callstack="E: x\n", error_code=7))
    put("nested-extra-keys", nested(callstack="E: x\n", zeta="z", alpha=["a", 1.5, None, True]))
    put("pretty", json.dumps(json.loads(nested(callstack="E: x\n")), indent=2).encode())
    put("raw-utf8", json.dumps(json.loads(nested(callstack="Ошибка 🔥\n")), ensure_ascii=False).encode())
    put("raw-utf8-new", json.dumps({"message": "Ошибка 🔥", "timestamp": 3}, ensure_ascii=False).encode())
    return sources


def torch_copy_up(src, code, dst):
    """PyTorch's @record meeting a ChildFailedError whose root cause is `src`: it copies
    `src` up to TORCHELASTIC_ERROR_FILE. In this process, to spare a Python start per copy."""
    def parent():
        failure = ProcessFailure(local_rank=0, pid=1234, exitcode=code, error_file=src)
        raise ChildFailedError("trainer", {0: failure})

    os.environ["TORCHELASTIC_ERROR_FILE"] = dst
    try:
        record(parent)()
    except ChildFailedError:
        pass
    finally:
        del os.environ["TORCHELASTIC_ERROR_FILE"]


def check_copy_up(tool, workdir, selected):
    """(name, problems) per source and code."""
    results = []
    directory = tempfile.mkdtemp(prefix="copy_up_", dir=workdir)
    sources = copy_up_sources(directory)
    for name, src in sources.items():
        for code in (0, 1, -11):
            item = f"copy-up/{name}-code{code}"
            if selected and not any(s in item for s in selected):
                continue
            problems = []
            ours_dst = os.path.join(directory, f"{name}.{code}.ours.json")
            torch_dst = os.path.join(directory, f"{name}.{code}.pytorch.json")
            rc, _, err = run_worker(worker_command("ours", "child_failure", src, str(code)), ours_dst)
            torch_copy_up(src, code, torch_dst)
            if rc != 1:
                problems.append(f"record_worker exited with {rc}: {err[-500:]}")
            if not (os.path.isfile(ours_dst) and os.path.isfile(torch_dst)):
                results.append((item, problems + ["a copy is missing"]))
                continue
            with open(src, "rb") as fp:
                source = fp.read()
            with open(ours_dst, "rb") as fp:
                ours_bytes = fp.read()
            with open(torch_dst, "rb") as fp:
                torch_bytes = fp.read()
            data = json.loads(source)
            rewritten = code != 0 and isinstance(data.get("message"), dict)
            if rewritten or json.dumps(data).encode() == source:
                if ours_bytes != torch_bytes:
                    problems.append(f"copies differ:\n  PyTorch {torch_bytes[:300]!r}\n  ours    {ours_bytes[:300]!r}")
            else:
                # Documented: with nothing to change we copy the bytes as they are;
                # PyTorch writes them again in json.dumps form. Equal as JSON.
                if ours_bytes != source:
                    problems.append("ours did not copy the bytes as they are")
                if json.loads(ours_bytes) != json.loads(torch_bytes):
                    problems.append("copies differ as JSON")
                if ours_bytes == torch_bytes:
                    problems.append("copies are byte-identical: the documented difference is gone")
            # Both copies, read by both readers, agree.
            for who, path in (("ours", ours_dst), ("pytorch", torch_dst)):
                case = Case("copy-up", f"{name}-{who}", [Failure(0, code if code else 1, path=path)])
                problems += [f"reading the {who} copy: {p}" for p in check_case(tool, case, workdir)]
            results.append((item, problems))
    return results


# ---------------------------------------------------------------- launchers end to end

SUMMARY_FAILURE = re.compile(
    r"\[(\d+)\]:\n  time      : (.*)\n  host      : (.*)\n  rank      : (-?\d+) \(local_rank: (-?\d+)\)\n"
    r"  exitcode  : (-?\d+) \(pid: (\d+)\)\n  error_file: (.*)\n  traceback : ")


SUMMARY_START = re.compile(r"^(=+)\n.* FAILED\n-+\nFailures:\n", re.M)


def printed_summary(output):
    """The last summary block a launcher printed (from the blank line before its
    first '=' line to its closing '=' line), whatever came before it on that line."""
    starts = list(SUMMARY_START.finditer(output))
    if not starts:
        return None
    start = starts[-1]
    border = start[1]
    end = output.find("\n" + border + "\n", start.end())
    if end < 0 and output.endswith("\n" + border):
        end = len(output) - len(border) - 1
    if end < 0:
        return None
    return "\n" + output[start.start():end + 1 + len(border)]


class LaunchCase:
    """A launcher running workers; its printed summary must be the one our
    ChildFailedError builds from the same error files, and show `texts`."""

    def __init__(self, name, launcher, nproc, worker, texts, exitcode=1):
        self.name, self.launcher, self.nproc, self.worker = name, launcher, nproc, worker
        self.texts, self.exitcode = texts, exitcode

    def command(self, log_dir):
        worker = worker_command(*self.worker)
        if self.launcher == "torchrun":  # 1.13 knows only the underscore spellings
            return [PYTHON, TORCHRUN, "--standalone", f"--nproc_per_node={self.nproc}", "--no_python",
                    f"--log_dir={log_dir}", *worker]
        if self.launcher == "elastic-run":
            return [OPTIONS.elastic_run, "--standalone", f"--nproc-per-node={self.nproc}", "--no-python",
                    f"--log-dir={log_dir}", *worker]
        raise ValueError(self.launcher)

    def available(self):
        return self.launcher != "elastic-run" or OPTIONS.elastic_run is not None


LAUNCH_CASES = [
    LaunchCase("torchrun-ours-throw", "torchrun", 2, ("ours", "throw"), ["SentinelError: foobar"]),
    LaunchCase("torchrun-ours-nested", "torchrun", 2, ("ours", "nested"),
               ["std::runtime_error: optimizer setup failed", "learning rate must be positive"]),
    LaunchCase("torchrun-ours-signal", "torchrun", 1, ("ours", "signal", "11"),
               ["11 (SIGSEGV)"]),  # "Signal 11 (SIGSEGV) received by PID", or a crash file's headline
    # Our launcher running PyTorch's @record workers (run with --elastic-run PATH).
    LaunchCase("elastic-run-pytorch-raise", "elastic-run", 2, ("pytorch", "raise"),
               ["RuntimeError: foobar", "Traceback (most recent call last):", 'raise RuntimeError("foobar")']),
    LaunchCase("elastic-run-pytorch-chained", "elastic-run", 2, ("pytorch", "chained"),
               ["RuntimeError: optimizer setup failed", "The above exception was the direct cause"]),
    LaunchCase("elastic-run-pytorch-signal", "elastic-run", 1, ("pytorch", "signal", "11"),
               ["11 (SIGSEGV)"]),  # "Signal 11 (SIGSEGV) received by PID", or a crash file's headline
]


def check_launcher_copy(tool, case, ours, parent_file, workdir):
    """The launcher's copy of the root cause's file: the same JSON plus errorCode, read
    alike by both readers. No copy when the root cause left no file."""
    root = next(f for f in case.failures if f.rank == ours["root_rank"])
    if not os.path.isfile(root.path):
        return ["the launcher copied a file the root cause never wrote"] if os.path.exists(parent_file) else []
    if not os.path.isfile(parent_file):
        return ["the launcher did not copy the root cause's error file up"]
    with open(root.path, "rb") as fp:
        expected = json.load(fp)
    expected["message"]["errorCode"] = root.exitcode
    with open(parent_file, "rb") as fp:
        copied = json.load(fp)
    problems = [] if copied == expected else [f"launcher's copy {short(copied)} != {short(expected)}"]
    parent_case = Case("launch", "launcher-copy", [Failure(0, 1, path=parent_file)])
    return problems + [f"reading the launcher's copy: {p}" for p in check_case(tool, parent_case, workdir)]


def check_launch(tool, launch, workdir):
    problems = []
    directory = tempfile.mkdtemp(prefix=launch.name + "_", dir=workdir)
    # The launcher's own @record copies the root cause's file up to this one.
    parent_file = os.path.join(directory, "launcher_error.json")
    env = dict(os.environ, ELASTIC_LOG_LEVEL="off", OMP_NUM_THREADS="1", TORCHELASTIC_ERROR_FILE=parent_file)
    proc = subprocess.run(launch.command(os.path.join(directory, "logs")), cwd=directory, env=env,
                          capture_output=True, timeout=300)
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != launch.exitcode:
        problems.append(f"launcher exit code {proc.returncode}, expected {launch.exitcode}")
    summary = printed_summary(stderr)
    if summary is None:
        return problems + ["no summary printed:\n" + stderr[-3000:]]
    for text in launch.texts:
        if text not in summary:
            problems.append(f"printed summary lacks {text!r}")
    # The same failures map, rebuilt from what the launcher printed, through ours.
    title = summary.split("\n")[2].removesuffix(" FAILED")
    failures, now_ranks = [], set()
    for m in SUMMARY_FAILURE.finditer(summary):
        rank, local_rank, exitcode, pid, path = int(m[4]), int(m[5]), int(m[6]), int(m[7]), m[8]
        if path == NOT_AVAILABLE:
            now_ranks.add(rank)
        failures.append(Failure(rank, exitcode, local_rank=local_rank, pid=pid,
                                path=path if path != NOT_AVAILABLE else os.path.join(directory, "absent.json")))
    # Workers the launcher stopped after the first failure are not failures: 1 to nproc.
    if not 1 <= len(failures) <= launch.nproc:
        return problems + [f"{len(failures)} failures in the printed summary, expected 1 to {launch.nproc}"]
    failures.sort(key=lambda f: f.rank)
    case = Case("launch", launch.name, failures, title=title)
    ours = run_ours(tool, case, [f.path for f in failures])
    mine = ours.get("summary", "")
    mask = re.compile(r"(  time      : ).*")
    if now_ranks:
        # No file: the time is when the launcher looked; compare everything else.
        summary, mine = mask.sub(r"\1*", summary), mask.sub(r"\1*", mine)
    if mine != summary:
        problems.append("our summary of the same failures differs from the printed one:\n" +
                        summary_diff(summary, mine))
    problems += check_launcher_copy(tool, case, ours, parent_file, workdir)
    # The rebuilt map is the launcher's own: PyTorch's ChildFailedError prints the same.
    theirs = run_torch(case, [f.path for f in failures]).get("summary")
    theirs = mask.sub(r"\1*", theirs) if now_ranks and isinstance(theirs, str) else theirs
    if theirs != summary:
        problems.append(f"rebuilding the launcher's failures map failed: {short(theirs)}")
    return problems


# ---------------------------------------------------------------- the checks can fail

def self_test(tool, workdir):
    """Each check must flag a perturbed case: a driver that cannot fail proves nothing."""
    results = []
    base = Case("self-test", "base", [Failure(0, 1, nested(callstack=traceback_of("RuntimeError: foobar"))),
                                      Failure(1, -9, new("killed", 5))])

    def flagged(name, problems):
        results.append((f"self-test/{name}", [] if problems else ["the perturbation was not flagged"]))

    def perturbed(mutate_case=None, mutate_ours=None, check=None):
        directory = tempfile.mkdtemp(prefix="self_test_", dir=workdir)
        case = Case("self-test", "base", [Failure(f.rank, f.exitcode, f.file) for f in base.failures])
        paths = materialize(case, directory)
        ours = run_ours(tool, case, paths)
        if mutate_ours:
            mutate_ours(ours)
        if mutate_case:
            mutate_case(case, paths)
        torch_result = run_torch(case, paths)
        if check:
            return check(Context(tool, case, paths), torch_result, ours)
        return compare(torch_result, ours)

    def rewrite(rank, old, new_text):
        def mutate(case, paths):
            with open(paths[rank], "rb") as fp:
                data = fp.read()
            with open(paths[rank], "wb") as fp:
                fp.write(data.replace(old, new_text, 1))
        return mutate

    results.append(("self-test/unperturbed-agrees", perturbed()))
    flagged("message-one-character", perturbed(rewrite(1, b"killed", b"killeD")))
    flagged("callstack-one-character", perturbed(rewrite(0, b"foobar", b"foobaR")))
    flagged("timestamp-plus-one", perturbed(rewrite(1, b"5}", b"6}")))
    flagged("exitcode", perturbed(lambda c, p: setattr(c.failures[1], "exitcode", -6)))
    flagged("pid", perturbed(lambda c, p: setattr(c.failures[0], "pid", 4)))
    flagged("local-rank", perturbed(lambda c, p: setattr(c.failures[0], "local_rank", 3)))
    flagged("title-trailing-space", perturbed(lambda c, p: setattr(c, "title", "trainer ")))
    flagged("summary-one-byte", perturbed(mutate_ours=lambda o: o.update(summary=o["summary"][:-1] + "-")))
    flagged("root-rank", perturbed(mutate_ours=lambda o: o.update(root_rank=0)))
    flagged("signal-name", perturbed(mutate_ours=lambda o: o["failures"][1].update(signal_name="SIGTERM")))
    flagged("isoformat", perturbed(mutate_ours=lambda o: o["failures"][0].update(timestamp_isoformat="x")))
    flagged("refused-a-good-file", perturbed(mutate_ours=lambda o: o["failures"][0].update(ok=False, error="e")))
    # The launch checks read the summary out of a launcher's output.
    block = "\n" + "=" * 12 + "\nx FAILED\n" + "-" * 12 + "\nFailures:\n  <NO_OTHER_FAILURES>\n" + "-" * 12 + \
        "\nRoot Cause (first observed failure):\n[0]:\n  traceback : ====\n" + "=" * 12
    for name, output in [("end", "noise\nChildFailedError: " + block + "\n"),
                         ("middle", "ChildFailedError: " + block + "\nmore output\n"),
                         ("no-newline", "elastic.ChildFailedError: " + block)]:
        found = printed_summary(output)
        results.append((f"self-test/printed-summary-{name}", [] if found == block else [f"got {found!r}"]))
    results.append(("self-test/printed-summary-none", [] if printed_summary("no summary\n") is None else ["found one"]))
    # A documented difference applied where there is none must fail too.
    for name, check in [("unnamed-signal", check_unnamed_signal), ("rank-order", check_rank_order),
                        ("hostile-value", check_hostile_value), ("strict-json", check_strict_json),
                        ("bom", check_bom)]:
        flagged(f"no-{name}-difference", perturbed(check=check))
    return results


# ---------------------------------------------------------------- main

def guarded(check, *args):
    """A check's problems; an error of the driver itself fails that case alone, with its traceback."""
    try:
        return check(*args)
    except Exception:
        import traceback
        return ["the check itself failed:\n" + traceback.format_exc()]


def groups():
    table = dict(corpus.GROUPS)
    table["written-by-ours"] = written_by_ours
    table["written-by-pytorch"] = written_by_pytorch
    return table


SPECIAL_GROUPS = ("copy-up", "launch", "self-test")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", required=True, help="the summarize tool")
    parser.add_argument("--worker", required=True, help="record_worker")
    parser.add_argument("--elastic-run", help="our launcher, for the launch cases that use it")
    parser.add_argument("--group", action="append", help="group(s) to run (default: all)")
    parser.add_argument("--case", action="append", help="only cases whose id contains this")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    OPTIONS.ours, OPTIONS.worker = os.path.abspath(args.ours), os.path.abspath(args.worker)
    OPTIONS.elastic_run = os.path.abspath(args.elastic_run) if args.elastic_run else None
    logging.disable(logging.CRITICAL)  # PyTorch logs every file it cannot parse
    set_timezone("UTC")

    table = groups()
    names = args.group or list(table) + list(SPECIAL_GROUPS)
    unknown = [n for n in names if n not in table and n not in SPECIAL_GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; known: {list(table) + list(SPECIAL_GROUPS)}")
    print(f"PyTorch {torch.__version__} (Python {sys.version.split()[0]}), host {socket_fqdn()}")
    if args.list:
        for name in names:
            if name in table:
                items = [c.id for c in table[name]()]
            elif name == "launch":
                items = [f"launch/{lc.name}" for lc in LAUNCH_CASES]
            else:
                items = [name + "/*"]
            print("\n".join(items))
        return 0

    failed, passed = [], 0
    workdir = tempfile.mkdtemp(prefix="elastic_conformance_")
    try:
        for name in names:
            if name in table:
                outcomes = []
                for case in table[name]():
                    if args.case and not any(s in case.id for s in args.case):
                        continue
                    if any(f.worker for f in case.failures):
                        case.prepare = prepare_workers
                    outcomes.append((case.id, guarded(check_case, OPTIONS.ours, case, workdir)))
            elif name == "copy-up":
                outcomes = check_copy_up(OPTIONS.ours, workdir, args.case)
            elif name == "launch":
                chosen = [lc for lc in LAUNCH_CASES if not args.case or any(s in lc.name for s in args.case)]
                for lc in chosen:
                    if not lc.available():
                        print(f"skip launch/{lc.name} (no --elastic-run)")
                outcomes = [(f"launch/{lc.name}", guarded(check_launch, OPTIONS.ours, lc, workdir))
                            for lc in chosen if lc.available()]
            else:
                outcomes = self_test(OPTIONS.ours, workdir)
            for case_id, problems in outcomes:
                if problems:
                    failed.append(case_id)
                    print(f"FAIL {case_id}")
                    for problem in problems:
                        print("     " + problem.replace("\n", "\n     "))
                else:
                    passed += 1
                    if args.verbose:
                        print(f"ok   {case_id}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{passed} agreed, {len(failed)} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
