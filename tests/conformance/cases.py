"""The conformance corpus: failures maps built from error files, as data.

A Case is a failures map (global rank -> failure) whose error files are written
to a fresh directory before each run. `expect` is "agree" (our fields and
summary must equal PyTorch's) or the id of a documented difference (DIFFERENCES
in driver.py), whose check then decides. Add a case by appending to a group.
"""
import json
import signal
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

# File contents: bytes, or one of these special kinds of path.
MISSING = "!missing"            # nothing at the path
DIRECTORY = "!directory"        # a directory at the path
FIFO = "!fifo"                  # a named pipe at the path (must not block the reader)
SYMLINK_LOOP = "!symlink-loop"  # a symlink pointing at itself
DANGLING = "!dangling"          # a symlink to nothing
DEV_ZERO = "!dev-zero"          # a symlink to /dev/zero (endless, not a regular file)
NOT_AVAILABLE_PATH = "!n/a"     # the literal path "<N/A>", as a copy-up may pass
EMPTY_PATH = "!empty-path"      # the path ""
SYMLINK_TO_FILE = "!symlink"    # a symlink to a good error file


@dataclass
class Failure:
    rank: int
    exitcode: int = 1
    file: Union[bytes, str] = MISSING
    local_rank: Optional[int] = None  # defaults to rank
    pid: Optional[int] = None         # defaults to 1000 + rank
    path: Optional[str] = None        # an existing file to use instead of `file`
    filename: str = "error.json"
    # A real worker that writes the file: ("ours", MODE, ARGS...) runs record_worker,
    # ("pytorch", MODE, ARGS...) python_worker.py; its exit code and pid are used.
    worker: Optional[tuple] = None

    def __post_init__(self):
        if self.local_rank is None:
            self.local_rank = self.rank
        if self.pid is None:
            self.pid = 1000 + self.rank


@dataclass
class Case:
    group: str
    name: str
    failures: List[Failure]
    title: str = "trainer"
    expect: str = "agree"
    enrich: Optional[str] = None  # our handler appends this in the signal hook
    tz: str = "UTC"
    # Run before the comparison, e.g. to produce error files with real workers;
    # gets the case directory, may fill in Failure.path.
    prepare: Optional[Callable[["Case", str], None]] = None
    # Extra checks on top of the comparison: (case, torch_result, our_result) -> problems.
    extra_checks: List[Callable] = field(default_factory=list)

    @property
    def id(self):
        return f"{self.group}/{self.name}"


# ---- error file contents, as PyTorch writes them (json.dumps defaults) ----

def dumps(data) -> bytes:
    return json.dumps(data).encode("utf-8")


def nested(message="RuntimeError: foobar", callstack=None, timestamp="1605774851", error_code=None, **extra):
    """The format ErrorHandler.record_exception writes; error_code as a copy-up adds."""
    info = {}
    if callstack is not None:
        info["py_callstack"] = callstack
    info["timestamp"] = timestamp
    info.update(extra)
    body = {"message": message, "extraInfo": info}
    if error_code is not None:
        body["errorCode"] = error_code
    return dumps({"message": body})


def traceback_of(message, frames=2):
    lines = ["Traceback (most recent call last):"]
    for i in range(frames):
        lines.append(f'  File "/workspace/train.py", line {10 + i}, in step_{i}')
        lines.append(f"    do_step_{i}()")
    return "\n".join(lines) + "\n" + message + "\n"


def new(message="test error message", timestamp=10):
    return dumps({"message": message, "timestamp": timestamp})


def new_without_timestamp(message="test error message"):
    return dumps({"message": message})


def mast(message="test error message", timestamp="10"):
    return dumps({"message": message, "timestamp": timestamp})


# ---- the corpus ----

def formats():
    g = "formats"
    tb = traceback_of("RuntimeError: foobar")
    return [
        Case(g, "nested", [Failure(0, 1, nested(callstack=tb))]),
        Case(g, "nested-errorcode", [Failure(0, 1, nested(callstack=tb, error_code=1))]),
        Case(g, "nested-errorcode-signal", [Failure(0, -11, nested(callstack=tb, error_code=-11))]),
        Case(g, "nested-without-callstack", [Failure(0, 1, nested())]),
        Case(g, "nested-multiline-message-without-callstack",
             [Failure(0, 1, nested(message="ValueError: line one\nline two"))]),
        Case(g, "nested-without-message-or-callstack",
             [Failure(0, 1, dumps({"message": {"extraInfo": {"timestamp": "5"}}}))]),
        Case(g, "nested-empty-callstack", [Failure(0, 1, nested(callstack=""))]),
        Case(g, "nested-empty-message", [Failure(0, 1, nested(message=""))]),
        Case(g, "nested-extra-keys",
             [Failure(0, 1, nested(callstack=tb, hostname="node7", errorCode="E12", rank="3"))]),
        Case(g, "nested-integer-timestamp", [Failure(0, 1, nested(callstack=tb, timestamp=1605774851))]),
        Case(g, "new", [Failure(0, 1, new())]),
        Case(g, "new-multiline", [Failure(0, 1, new("first\nsecond\n  third"))]),
        Case(g, "new-without-timestamp", [Failure(0, 1, new_without_timestamp())]),
        Case(g, "new-empty-message", [Failure(0, 1, new(""))]),
        Case(g, "new-empty-message-signal", [Failure(0, -6, new(""))]),
        Case(g, "mast", [Failure(0, 1, mast())]),
        Case(g, "mast-padded-timestamp", [Failure(0, 1, mast(timestamp=" 42\n"))]),
        Case(g, "mast-underscore-timestamp", [Failure(0, 1, mast(timestamp="1_605_774_851"))]),
        Case(g, "mast-signed-timestamps", [Failure(0, 1, mast(timestamp="+7")), Failure(1, 1, mast(timestamp="-7"))]),
        Case(g, "float-timestamp", [Failure(0, 1, new(timestamp=1605774851.9))]),
        Case(g, "negative-float-timestamp", [Failure(0, 1, new(timestamp=-2.5))]),
        Case(g, "bool-timestamp", [Failure(0, 1, new(timestamp=True))]),
        Case(g, "pretty-printed", [Failure(0, 1, json.dumps(
            {"message": {"message": "E: x", "extraInfo": {"py_callstack": tb, "timestamp": "7"}}},
            indent=4).encode())]),
        Case(g, "raw-utf8-not-escaped", [Failure(0, 1, json.dumps(
            {"message": "Ошибка: 失敗 🔥", "timestamp": 3}, ensure_ascii=False).encode())]),
        Case(g, "keys-reordered", [Failure(0, 1, b'{"timestamp": 9, "extra": [1, 2.5, null, true], "message": "m"}')]),
        Case(g, "duplicate-keys", [Failure(0, 1, b'{"message": "first", "timestamp": 1, "message": "second"}')]),
        Case(g, "mast-leading-zeros", [Failure(0, 1, mast(timestamp="010")), Failure(1, 1, mast(timestamp="-0"))]),
        Case(g, "negative-zero-float", [Failure(0, 1, new(timestamp=-0.0))]),
        Case(g, "large-float-timestamp", [Failure(0, 1, new(timestamp=1e10))]),
        Case(g, "nested-with-top-level-timestamp", [Failure(0, 1, dumps(
            {"message": {"message": "E: x", "extraInfo": {"timestamp": "8"}}, "timestamp": 99}))]),
        Case(g, "message-message-not-string-with-callstack", [Failure(0, 1, nested(message=12, callstack="E: x\n"))]),
        Case(g, "new-with-extrainfo", [Failure(0, 1, dumps({"message": "m", "timestamp": 4, "extraInfo": {"x": 1}}))]),
        Case(g, "all-formats-together", [
            Failure(0, 1, nested(callstack=tb, timestamp="20")),
            Failure(1, 1, nested(callstack=tb, timestamp="21", error_code=1)),
            Failure(2, 1, new(timestamp=19)),
            Failure(3, 1, mast(timestamp="22")),
            Failure(4, -9, MISSING),
        ]),
    ]


def text():
    g = "text"
    long_line = "x" * 10000
    return [
        Case(g, "python-traceback", [Failure(0, 1, nested(callstack=traceback_of("KeyError: 'lr'", frames=30)))]),
        Case(g, "chained-traceback", [Failure(0, 1, nested(callstack=(
            traceback_of("ValueError: inner") +
            "\nThe above exception was the direct cause of the following exception:\n\n" +
            traceback_of("RuntimeError: outer"))))]),
        Case(g, "callstack-trailing-newlines", [Failure(0, 1, nested(callstack="E: x\n\n\n"))]),
        Case(g, "callstack-leading-newline", [Failure(0, 1, nested(callstack="\nE: x"))]),
        Case(g, "unicode-bmp", [Failure(0, 1, nested(callstack="ValueError: Ошибка — 失敗 ünïcödé\n"))]),
        Case(g, "unicode-astral", [Failure(0, 1, nested(callstack="ValueError: 🔥💥 𝔘𝔫𝔦𝔠𝔬𝔡𝔢\n"))]),
        Case(g, "unicode-combining-and-wide", [Failure(0, 1, new("e\u0301" * 30 + "全角" * 20))]),
        Case(g, "unicode-rtl-and-bom-char", [Failure(0, 1, new("\u202eevil\u202c \ufeff zero\u200bwidth"))]),
        Case(g, "width-by-code-points", [Failure(0, 1, new("é" * 40))]),
        Case(g, "control-characters", [Failure(0, 1, new("bell\x07 esc\x1b[31m red\x1b[0m nul\x00 del\x7f"))]),
        Case(g, "control-characters-nested", [Failure(0, 1, nested(callstack="tab\there\x00\x01\x1f\x7f\n"))]),
        Case(g, "carriage-returns", [Failure(0, 1, nested(callstack="one\r\ntwo\rthree\n" + "r" * 70 + "\r"))]),
        Case(g, "other-line-separators", [Failure(0, 1, new("a\u2028b\u2029c\x85d\x0be\x0cf" + "y" * 70))]),
        Case(g, "long-line", [Failure(0, 1, nested(callstack=long_line))]),
        Case(g, "very-long-message", [Failure(0, 1, nested(callstack=("line " * 40 + "\n") * 20000))]),
        Case(g, "exactly-60-wide", [Failure(0, 1, new("m" * (60 - len("  traceback : "))))]),
        Case(g, "61-wide", [Failure(0, 1, new("m" * (61 - len("  traceback : "))))]),
        Case(g, "narrow", [Failure(0, 1, new("m"))]),
        Case(g, "long-title", [Failure(0, 1, new("m"))], title="t" * 80),
        Case(g, "title-sets-width", [Failure(0, 1, new("m"))], title="t" * 50),
        Case(g, "unicode-title", [Failure(0, 1, new("m"))], title="тренер 训练 🔥"),
        Case(g, "multiline-title", [Failure(0, 1, new("m"))], title="first line\n" + "second " * 12),
        Case(g, "error-file-path-newline", [Failure(0, 1, new("m"), filename="err\n" + "p" * 70 + ".json")]),
        Case(g, "template-metacharacters", [Failure(0, 1, nested(
            callstack="${idx} $idx $$ $ {} {0} %s %(x)s \\n ${message}\n"))], title="$title ${name} {}"),
        Case(g, "backslashes-and-quotes", [Failure(0, 1, new('C:\\path\\"quoted"\\ \'single\''))]),
        Case(g, "json-escapes", [Failure(0, 1, b'{"message": "\\u00e9\\ud83d\\udd25\\/slash\\b\\f", "timestamp": 1}')]),
        Case(g, "whitespace-only", [Failure(0, 1, new("   \n  "))]),
        Case(g, "error-file-path-unicode", [Failure(0, 1, new("m"), filename="ошибка 失敗 $x.json")]),
    ]


def missing():
    g = "missing"
    return [
        Case(g, "missing-exit-1", [Failure(0, 1, MISSING)]),
        Case(g, "missing-exit-0", [Failure(0, 0, MISSING)]),
        Case(g, "missing-exit-255", [Failure(0, 255, MISSING)]),
        Case(g, "missing-signal", [Failure(0, -9, MISSING)]),
        Case(g, "directory", [Failure(0, 1, DIRECTORY)]),
        Case(g, "fifo", [Failure(0, 1, FIFO)]),
        Case(g, "symlink-loop", [Failure(0, 1, SYMLINK_LOOP)]),
        Case(g, "dangling-symlink", [Failure(0, 1, DANGLING)]),
        Case(g, "dev-zero-link", [Failure(0, 1, DEV_ZERO)]),
        Case(g, "empty-path", [Failure(0, 1, EMPTY_PATH)]),
        Case(g, "symlink-to-file", [Failure(0, 1, SYMLINK_TO_FILE)]),
        Case(g, "not-available-path", [Failure(0, -15, NOT_AVAILABLE_PATH)]),
        Case(g, "some-missing", [Failure(0, 1, nested(callstack="E: x\n", timestamp="1")),
                                 Failure(1, -9, MISSING), Failure(2, 1, DIRECTORY)]),
    ]


def signals():
    g = "signals"
    cases = []
    named = {s.value for s in signal.Signals}
    for signo in list(range(1, 66)) + [100, 1000]:
        expect = "agree" if signo in named else "unnamed-signal"
        cases.append(Case(g, f"signal-{signo}", [Failure(0, -signo, MISSING)], expect=expect))
    # With a file, the message comes from it; signal_name() is still asked for.
    cases.append(Case(g, "signal-with-file", [Failure(0, -11, nested(callstack="E: x\n"))]))
    cases.append(Case(g, "unnamed-signal-with-file", [Failure(0, -40, new("died"))], expect="unnamed-signal"))
    cases.append(Case(g, "signal-root-among-others", [
        Failure(0, -9, MISSING), Failure(1, 1, new("early", timestamp=5)), Failure(2, -6, new("", timestamp=7))]))
    return cases


def timestamps():
    g = "timestamps"
    cases = [
        Case(g, "equal-timestamps", [Failure(r, 1, new(f"rank {r}", timestamp=100)) for r in range(4)]),
        Case(g, "root-in-middle", [Failure(0, 1, new("a", 30)), Failure(1, 1, new("b", 10)), Failure(2, 1, new("c", 20))]),
        Case(g, "root-last", [Failure(0, 1, new("a", 30)), Failure(1, 1, new("b", 20)), Failure(2, 1, new("c", 10))]),
        Case(g, "tie-after-first", [Failure(0, 1, new("a", 30)), Failure(1, 1, new("b", 10)), Failure(2, 1, new("c", 10))]),
        Case(g, "missing-file-is-now", [Failure(0, 1, new("old", 10)), Failure(1, -9, MISSING)]),
    ]
    for ts in [0, 1, -1, 59, 951782400, 1605774851, 2147483647, 2147483648, 4102444800,
               -2208988800, -30610224000, 253402300799]:
        cases.append(Case(g, f"at-{ts}", [Failure(0, 1, new("m", ts))]))
    # Years before 1000 are written with four digits by Python.
    for ts in [-50000000000, -62000000000, -61000000000]:
        cases.append(Case(g, f"before-year-1000-at-{ts}", [Failure(0, 1, new("m", ts))]))
    return cases


def timezones():
    g = "timezones"
    cases = []
    stamps = [0, 1605774851, 1636264800, 1636268400, 1616893200, -30610224000, 1234567890]
    for tz in ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham",
               "Europe/Dublin", "America/St_Johns", "EST5EDT", "<+0130>-1:30"]:
        name = tz.replace("/", "-").replace("<", "").replace(">", "").replace(":", "")
        cases.append(Case(g, name, [Failure(i, 1, new("m", ts)) for i, ts in enumerate(stamps)], tz=tz))
    return cases


def ranks():
    g = "ranks"
    tb = traceback_of("RuntimeError: rank failed")
    return [
        Case(g, "1-rank", [Failure(0, 1, nested(callstack=tb))]),
        Case(g, "2-ranks", [Failure(0, 1, nested(callstack=tb, timestamp="11")),
                            Failure(1, 1, nested(callstack=tb, timestamp="10"))]),
        Case(g, "64-ranks", [Failure(r, 1 if r % 3 else -9,
                                     nested(callstack=tb, timestamp=str(1000 + (r * 37) % 64)) if r % 3 else MISSING)
                             for r in range(64)]),
        Case(g, "64-ranks-same-time", [Failure(r, 1, new(f"rank {r} failed", 5)) for r in range(64)]),
        Case(g, "sparse-global-ranks", [Failure(5, 1, new("a", 3), local_rank=1), Failure(17, 1, new("b", 2), local_rank=0),
                                        Failure(1000, 1, new("c", 4), local_rank=3)]),
        Case(g, "large-pids-and-codes", [Failure(0, 255, new("a", 3), pid=4194304), Failure(1, 2**31 - 1, new("b", 4), pid=1)]),
        Case(g, "negative-rank", [Failure(-1, 1, new("a", 3)), Failure(0, 1, new("b", 3))]),
        # PyTorch numbers failures in the dict's insertion order; ours is always rank order.
        Case(g, "insertion-order-not-rank-order", [Failure(2, 1, new("c", 3)), Failure(0, 1, new("a", 3)),
                                                   Failure(1, 1, new("b", 3))], expect="rank-order"),
    ]


def hostile():
    g = "hostile"
    deep = lambda n: ('{"message": "x", "timestamp": 1, "deep": ' + "[" * n + "]" * n + "}").encode()
    return [
        # PyTorch 1.13 raises from ProcessFailure; so do we.
        Case(g, "unknown-format", [Failure(0, 1, b'{"unknown_key": "unknown_value"}')]),
        Case(g, "empty-file", [Failure(0, 1, b"")]),
        Case(g, "truncated-json", [Failure(0, 1, nested(callstack="E: x\n")[:-7])]),
        Case(g, "invalid-utf8", [Failure(0, 1, b'{"message": "caf\xe9", "timestamp": 1}')]),
        Case(g, "top-level-array", [Failure(0, 1, b'["message"]')]),
        Case(g, "top-level-string", [Failure(0, 1, b'"message"')]),
        Case(g, "message-is-number", [Failure(0, 1, b'{"message": 12, "timestamp": 1}')]),
        Case(g, "message-is-null", [Failure(0, 1, b'{"message": null}')]),
        Case(g, "message-is-list", [Failure(0, 1, b'{"message": ["a"], "timestamp": 1}')]),
        Case(g, "nested-without-extrainfo", [Failure(0, 1, b'{"message": {"message": "E: x"}}')]),
        Case(g, "nested-without-timestamp", [Failure(0, 1, b'{"message": {"message": "E: x", "extraInfo": {}}}')]),
        Case(g, "extrainfo-is-list", [Failure(0, 1, b'{"message": {"message": "E: x", "extraInfo": ["timestamp"]}}')]),
        Case(g, "timestamp-not-integer-text", [Failure(0, 1, mast(timestamp="1.5"))]),
        Case(g, "timestamp-word", [Failure(0, 1, mast(timestamp="yesterday"))]),
        Case(g, "timestamp-null", [Failure(0, 1, new(timestamp=None))]),
        Case(g, "timestamp-list", [Failure(0, 1, new(timestamp=[1]))]),
        Case(g, "timestamp-bad-underscores", [Failure(0, 1, mast(timestamp="1__0")), Failure(1, 1, mast(timestamp="_1"))]),
        Case(g, "timestamp-trailing-underscore", [Failure(0, 1, mast(timestamp="1_"))]),
        Case(g, "timestamp-hex", [Failure(0, 1, mast(timestamp="0x10"))]),
        Case(g, "timestamp-bool-text", [Failure(0, 1, mast(timestamp="True"))]),
        Case(g, "raw-control-character-in-string", [Failure(0, 1, b'{"message": "tab\there", "timestamp": 1}')]),
        Case(g, "raw-newline-in-string", [Failure(0, 1, b'{"message": "line\nbreak", "timestamp": 1}')]),
        Case(g, "trailing-garbage", [Failure(0, 1, new("m", 1) + b" x")]),
        Case(g, "two-documents", [Failure(0, 1, new("m", 1) + new("n", 2))]),
        Case(g, "timestamp-nan", [Failure(0, 1, b'{"message": "m", "timestamp": NaN}')]),
        Case(g, "deep-nesting-100000", [Failure(0, 1, deep(100000))]),
        Case(g, "deep-nesting-400", [Failure(0, 1, deep(400))]),
        Case(g, "empty-object", [Failure(0, 1, b"{}")]),
        Case(g, "good-and-bad-ranks", [Failure(0, 1, new("fine", 1)), Failure(1, 1, b"{not json")]),
        # PyTorch 1.13 reads these, then crashes while formatting; we refuse them with a clear error.
        Case(g, "callstack-is-number", [Failure(0, 1, nested(callstack=12))], expect="hostile-value"),
        Case(g, "callstack-is-null", [Failure(0, 1, nested(callstack=None, py_callstack=None))], expect="hostile-value"),
        Case(g, "callstack-is-object", [Failure(0, 1, nested(callstack={"frames": []}))], expect="hostile-value"),
        Case(g, "message-message-is-list", [Failure(0, 1, nested(message=["E"]))], expect="hostile-value"),
        Case(g, "timestamp-1e300", [Failure(0, 1, new(timestamp=1e300))], expect="hostile-value"),
        Case(g, "timestamp-int64-max", [Failure(0, 1, new(timestamp=2**63 - 1))], expect="hostile-value"),
        Case(g, "timestamp-int64-min", [Failure(0, 1, new(timestamp=-2**63))], expect="hostile-value"),
        Case(g, "timestamp-beyond-int64", [Failure(0, 1, new(timestamp=2**70))], expect="hostile-value"),
        Case(g, "timestamp-text-beyond-int64", [Failure(0, 1, mast(timestamp="9223372036854775808"))],
             expect="hostile-value"),
        Case(g, "timestamp-after-year-9999", [Failure(0, 1, new(timestamp=253402300800))], expect="hostile-value"),
        Case(g, "timestamp-year-1", [Failure(0, 1, new(timestamp=-62135596800))], expect="hostile-value"),
        # Python's json and int() accept more than JSON and ASCII digits; we do not.
        Case(g, "lone-surrogate", [Failure(0, 1, b'{"message": "half \\ud800 pair", "timestamp": 1}')],
             expect="strict-json"),
        Case(g, "nan-elsewhere", [Failure(0, 1, b'{"message": "m", "timestamp": 1, "loss": NaN}')], expect="strict-json"),
        Case(g, "infinity-elsewhere", [Failure(0, 1, b'{"message": "m", "timestamp": 1, "x": -Infinity}')],
             expect="strict-json"),
        Case(g, "deep-nesting-600", [Failure(0, 1, deep(600))], expect="strict-json"),
        Case(g, "non-ascii-digits-timestamp", [Failure(0, 1, mast(timestamp="\uff11\uff12"))], expect="strict-json"),
        Case(g, "non-ascii-space-timestamp", [Failure(0, 1, mast(timestamp="\u00a012"))], expect="strict-json"),
        # PyTorch reads a file of any size; we stop at 64 MiB.
        Case(g, "over-64-mib", [Failure(0, 1, new("x" * (64 << 20), 1))], expect="size-limit"),
        # Python's json refuses a byte order mark; we skip it.
        Case(g, "byte-order-mark", [Failure(0, 1, b"\xef\xbb\xbf" + new("m", 1))], expect="bom"),
    ]


def hook():
    g = "hook"
    return [
        Case(g, "signal-root-missing-file", [Failure(0, -11, MISSING)], enrich="\n[device fault]", expect="enrich"),
        Case(g, "signal-root-with-file", [Failure(0, 1, new("x", 9)), Failure(1, -6, new("abort", 3))],
             enrich=" +ctx", expect="enrich"),
        Case(g, "signal-root-wide", [Failure(0, -7, nested(callstack="short"))], enrich="w" * 100, expect="enrich"),
        # Not applied to a root that exited, nor to a signal failure that is not the root.
        Case(g, "exit-root", [Failure(0, 1, new("x", 1)), Failure(1, -9, new("y", 2))], enrich=" +ctx"),
    ]


GROUPS: Dict[str, Callable[[], List[Case]]] = {
    "formats": formats,
    "text": text,
    "missing": missing,
    "signals": signals,
    "timestamps": timestamps,
    "timezones": timezones,
    "ranks": ranks,
    "hostile": hostile,
    "hook": hook,
}
