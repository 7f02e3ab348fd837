"""Where a worker process's CPU goes (BENCH_BREAKDOWN=1): py-spy samples the worker from when it is ready
until its backlog is committed, and each sample is put in one row by the innermost frame a rule names.

The rows are the stages of a record's path through a worker: the Kafka consume (aiokafka's fetch and
record decoding, FastStream's batch), the request's JSON parse and validation, the caller's proof check,
key lookup, the cryptography itself (Ed25519 signatures, AES-GCM, result keys sealed to callers), the
ledger (memory ledger, TigerBeetle client), the audit events, the publish (the batch builder and the
producer), the event loop itself, and everything else. A thread that runs no Python (the TigerBeetle
client's) is not seen by py-spy; its CPU is the worker's other-thread CPU less what the sampled Python
threads took, and is shown as a ledger row of its own.

py-spy is found as BENCH_PYSPY, else `py-spy` on PATH; without it the breakdown is skipped, said on stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROWS = ("kafka consume", "json parse", "caller proof", "key lookup", "kms (cold keys)", "signing input", "crypto",
        "ledger", "audit event", "result encode", "publish", "kafka i/o", "gc", "event loop", "other",
        "native threads")

_SERVICES = r"workers/(services|groups)/"
# (row, function name pattern or None, file pattern). A sample goes to the row of the innermost frame that
# SPECIFIC names; frames no rule names (the standard library's json, core/canonical.py, core/b64.py,
# aiokafka's record and protocol codecs, pydantic) count for the frame that called them. Only a sample
# that no specific rule names goes by FALLBACK: aiokafka's connection (the responses of fetch and produce
# both, read on its own task), the event loop.
SPECIFIC: list[tuple[str, str | None, str]] = [
    ("gc", r"^(gc_collect|collect_with_callback|collect_generations|_PyObject_GC_Link|gc_collect_main)", r".*"),
    # cryptography's calls (Rust and OpenSSL): natively, or from the Python line that makes them
    ("crypto", None, r"cryptography/|_rust\.abi3|libcrypto|libssl"),
    ("crypto", r"^(sign_each|seal_field|open_field)\b", r".*"),
    ("crypto", None, r"workers/core/(envelope|results)\.py"),
    ("kms (cold keys)", None, r"aiobotocore/|botocore/|aiohttp/|workers/kms/|workers/app/observability/ports\.py"),
    ("caller proof", None, r"^hmac\.py|workers/core/callers\.py|workers/services/callers\.py"),
    ("ledger", None, r"workers/ledger/|tigerbeetle/|workers/core/ids\.py"),
    ("ledger", r"^_(\w*_)?ops?$", _SERVICES),
    ("audit event", None, r"workers/keys/audit\.py"),
    ("key lookup", None, r"workers/keys/|workers/keystore/"),
    ("key lookup", r"(_unwrap_missing|_keyring|active|_key_for|_entry)", _SERVICES),
    ("signing input", None, r"workers/core/signing\.py"),
    ("json parse", r"^(parse\w*|_parse\w*|_refuse_what_the_model_cannot_parse|_validated|decode_value|"
                   r"refuse_too_large|result_bound|signed_bound)$",
     r"workers/|schemas/"),
    ("result encode", r"^to_json$", r"^schemas/"),
    ("json parse", None, r"^schemas/"),
    ("result encode", r"^(signed_record|signed_value|_outputs|_refuse_too_large|_record_bytes|_encode|\w*result\w*)$",
     r"workers/(groups|services)/"),
    ("publish", None, r"workers/kafka/publisher\.py|aiokafka/producer/"),
    ("kafka consume", None, r"aiokafka/consumer/|faststream/|workers/kafka/(records|consume|offsets)\.py"),
    ("other", None, _SERVICES),
]
FALLBACK: list[tuple[str, str | None, str]] = [
    ("kafka i/o", None, r"aiokafka/"),
    ("event loop", None, r"^asyncio/|^selectors\.py|uvloop|epoll"),
]
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _compiled(rules: list[tuple[str, str | None, str]]) -> list[tuple[str, re.Pattern[str] | None, re.Pattern[str]]]:
    return [(row, re.compile(name) if name else None, re.compile(file)) for row, name, file in rules]


_SPECIFIC, _FALLBACK = _compiled(SPECIFIC), _compiled(FALLBACK)


def row_of(stack: Iterable[str]) -> str:
    """The row of one sampled stack, frames listed from the outermost to the innermost. A rule's name pattern
    is matched against the function's own name (`Class.method.<locals>.<listcomp>` is `method`)."""
    frames = []
    for frame in reversed(list(stack)):
        match = _FRAME.match(frame)
        name, file = (match["name"], match["file"]) if match else (frame, frame)
        frames.append((name.split(".<locals>")[0].rsplit(".", 1)[-1], file))
    for rules in (_SPECIFIC, _FALLBACK):
        for name, file in frames:
            for row, name_rule, file_rule in rules:
                if (name_rule is None or name_rule.search(name)) and file_rule.search(file):
                    return row
    return "other"


_THREAD = re.compile(r"^thread \((?P<tid>\d+)\)")


def classify(raw: str) -> dict[int, Counter[str]]:
    """py-spy's raw output (`--format raw --threads`: one line a distinct stack, `thread (tid): name;frames...
    count`) as sample counts by row, for each thread id."""
    threads: dict[int, Counter[str]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = _THREAD.match(frames[0])
        if thread is None:
            continue
        threads.setdefault(int(thread["tid"]), Counter())[row_of(frames[1:])] += int(count)
    return threads


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user and kernel) of each thread of a process so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


@dataclass
class Breakdown:
    """Sample counts by row for each Python thread py-spy saw, and each thread's CPU seconds over the same
    window (threads py-spy did not see run no Python: the TigerBeetle client's)."""

    samples: dict[int, Counter[str]]
    cpu: dict[int, float]

    def table(self, records: int) -> dict[str, float]:
        """Microseconds a record by row: each thread's samples share that thread's CPU."""
        rows = dict.fromkeys(ROWS, 0.0)
        for tid, seconds in self.cpu.items():
            counts = self.samples.get(tid)
            if not counts:
                rows["native threads"] += seconds * 1e6 / records
                continue
            total = sum(counts.values())
            for row, count in counts.items():
                rows[row] += seconds * 1e6 / records * count / total
        return rows


def render(title: str, rows: dict[str, float], floor: tuple[str, float] | None = None) -> str:
    total = sum(rows.values())
    lines = [f"  where {title}'s worker CPU goes ({total:.1f} us a record, py-spy samples):"]
    for row, us in rows.items():
        lines.append(f"    {row:<20} {us:7.1f} us  {us / total if total else 0:6.1%}")
    if floor:
        lines.append(f"    ({floor[0]}: {floor[1]:.1f} us a record)")
    return "\n".join(lines)


def figures(prefix: str, rows: dict[str, float]) -> dict[str, float]:
    """The rows as the bench's JSON figures: `{prefix}_where_{row}_us`."""
    return {f"{prefix}_where_{re.sub(r'[^a-z]+', '_', row).strip('_')}_us": round(us, 1) for row, us in rows.items()}


def wanted() -> bool:
    return os.environ.get("BENCH_BREAKDOWN", "") not in ("", "0")


def sampler(pid: int) -> Sampler | None:
    """A Sampler of `pid` when BENCH_BREAKDOWN asks for one (`native`: native frames too, which shows the
    garbage collector and the C extensions' own functions)."""
    if not wanted():
        return None
    return Sampler(pid, rate=int(os.environ.get("BENCH_BREAKDOWN_RATE", "250")),
                   native=os.environ["BENCH_BREAKDOWN"] == "native")


def _pyspy() -> str | None:
    return os.environ.get("BENCH_PYSPY") or shutil.which("py-spy")


class Sampler:
    """py-spy recording one process until `stop`. It pauses the worker for each sample (`--nonblocking`
    reads a running process and puts a share of its samples in the wrong frame)."""

    def __init__(self, pid: int, rate: int = 250, native: bool = False) -> None:
        binary = _pyspy()
        self.pid = pid
        self.cpu_before = thread_cpu(pid)
        self.output = Path(tempfile.mkstemp(prefix="keyledger-bench-pyspy-", suffix=".txt")[1])
        self.process = None if binary is None else subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
             *(("--native",) if native else ()), "--output", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> Breakdown | None:
        """The breakdown of the window since start (None without py-spy or its samples)."""
        if self.process is None:
            return None
        after = thread_cpu(self.pid)
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        text = self.output.read_text() if self.output.exists() else ""
        if not text:
            print("  py-spy took no samples", file=sys.stderr, flush=True)
        print(f"  py-spy samples (raw, collapsed stacks): {self.output}", file=sys.stderr, flush=True)
        cpu = {tid: seconds - self.cpu_before.get(tid, 0.0) for tid, seconds in after.items()}
        return Breakdown(classify(text), cpu) if text else None
