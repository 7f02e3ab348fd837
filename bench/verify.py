"""`keyledger verify` figures: spans verified a second by the CLI beside raw Ed25519 verification of the
same signing inputs, one core.

The file holds N signed spans (BENCH_VERIFY_SPANS, default 100,000) over 100 tenants' signing keys, each
line the bytes the signer writes on spans.signed (its own parse, signing input, signature and splice);
the keys' `generated` events go to `keys.events` on an embedded broker. Figures:

- raw: `Ed25519PublicKey.verify` over the file's signing inputs with key objects made beforehand, one
  thread, measured before and after every verify-phase run.
- whole CLI: `keyledger verify FILE` as an operator runs it, start to exit, stdout to a file; and of an
  empty file, the fixed cost (start-up, broker checks, reading keys.events).
- verify phase: the same command in a child that notes the monotonic clock when `load_book` returns
  (the module attribute the CLI calls, wrapped); the phase runs from there to the child's exit, so it
  holds reading, parsing, checking, verification, output and interpreter exit, not start-up or the
  topic read. Two modes, three runs each, alternating: as shipped (`verify_*`: checks on one thread
  per CPU, workers.tools.verify.default_threads) and on one thread (`verify_one_thread_*`: the probe
  passes threads=0). A ratio is the median of each run against the mean of the raw runs beside it.
- CPU: user + system seconds of the phase child (all its threads) over its phase against the raw
  loop's thread CPU: the figure a neighbour's load moves least on a shared machine; with threads it
  says what the hand-overs cost, not how much sooner the file is done.

Every verdict must be `valid` with the job ids in file order, else the bench fails.
BENCH_PROFILE=path also writes a cProfile of one single-threaded CLI run there.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bench.common import broker, say
from bench.signing import TENANTS, sample_span
from schemas.messages import KeyEvent, KeyEventType, KeyType
from workers.core import ids
from workers.core.b64 import b64encode
from workers.core.signing import private_key_from_seed, public_key_bytes, signing_input
from workers.groups.signer import parse_job, signed_value
from workers.kafka.records import InboundRecord
from workers.kafka.tap import produce
from workers.kafka.topics import ensure_topics
from workers.keystore.directory import KeyEntry, KeyState
from workers.services.signing import sign_each
from workers.settings import Settings
from workers.tools.verify import default_threads

ROOT = Path(__file__).resolve().parent.parent

# the CLI as `python -m workers.app.cli verify FILE`, noting when the book is loaded (on stderr, one line);
# `serial` as second argument keeps every check on the main thread (write_verdicts's threads=0)
PHASE_PROBE = """
import runpy, sys, time
import workers.tools.verify as verify
loaded, shipped = verify.load_book, verify.write_verdicts
async def noted(*args, **kwargs):
    book = await loaded(*args, **kwargs)
    print(f"bench-book-loaded {time.monotonic()!r} {time.process_time()!r}", file=sys.stderr, flush=True)
    return book
def serial(*args, **kwargs):
    return shipped(*args, **{**kwargs, "threads": 0})
verify.load_book = noted
if sys.argv[2] == "serial":
    verify.write_verdicts = serial
sys.argv = ["keyledger", "verify", sys.argv[1]]
runpy.run_module("workers.app.cli", run_name="__main__")
"""


class Tenant:
    def __init__(self, number: int) -> None:
        self.tenant_id = f"tenant-{number:03d}"
        self.key_id = os.urandom(16).hex()
        self.private = private_key_from_seed(os.urandom(32))
        self.public = public_key_bytes(self.private)
        self.entry = KeyEntry(self.key_id, self.tenant_id, KeyType.SIGNING, 1, KeyState.ACTIVE)

    def generated(self, occurred_at: datetime) -> bytes:
        return KeyEvent(event_id=ids.event_id("generated", self.key_id), type=KeyEventType.GENERATED,
                        tenant_id=self.tenant_id, key_id=self.key_id, key_type=KeyType.SIGNING, version=1,
                        occurred_at=occurred_at, public_key=b64encode(self.public)).to_json()


def signed_spans(tenants: list[Tenant], spans: int) -> tuple[list[bytes], list[tuple[Ed25519PublicKey, bytes, bytes]]]:
    """The lines the signer writes for `spans` requests (its parse, input, signature and splice), and per
    line the (public key object, raw signature, signing input) the raw floor verifies."""
    publics = {t.key_id: Ed25519PublicKey.from_public_bytes(t.public) for t in tenants}
    signed_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    lines: list[bytes] = []
    raw: list[tuple[Ed25519PublicKey, bytes, bytes]] = []
    for start in range(0, spans, 1000):  # the signer's batches
        kept, keys, messages = [], [], []
        for i in range(start, min(start + 1000, spans)):
            tenant = tenants[i % len(tenants)]
            request = json.dumps({"job_id": f"job-{i}", "tenant_id": tenant.tenant_id, "span": sample_span(i)})
            job = parse_job(InboundRecord("spans.to-sign", 0, i, tenant.tenant_id.encode(), request.encode()), 1 << 20)
            messages.append(signing_input(job.tenant_id, tenant.key_id, job.span, known_plain=job.plain))
            keys.append(tenant.private)
            kept.append((tenant.entry, job))
        signatures = sign_each(keys, messages)
        lines.extend(signed_value(job, entry.key_id, signature, signed_at)
                     for (entry, job), signature in zip(kept, signatures, strict=True))
        raw.extend((publics[entry.key_id], signature, message)
                   for (entry, _), signature, message in zip(kept, signatures, messages, strict=True))
    return lines, raw


def raw_verify_rate(raw: list[tuple[Ed25519PublicKey, bytes, bytes]]) -> tuple[float, float]:
    """The floor: Ed25519 verification alone over the file's signing inputs, key objects made beforehand;
    (per wall second, per CPU second of this thread)."""
    start, cpu = time.perf_counter(), time.thread_time()
    for public, signature, message in raw:
        public.verify(signature, message)
    return len(raw) / (time.perf_counter() - start), len(raw) / (time.thread_time() - cpu)


def cli(args: list[str], bootstrap: str, out: Path) -> tuple[float, subprocess.CompletedProcess, float]:
    """(wall seconds, the finished process, its exit time on the monotonic clock); stdout to `out`."""
    env = {**os.environ, "KEYLEDGER_KAFKA_BOOTSTRAP": bootstrap}
    with out.open("wb") as stdout:
        start = time.monotonic()
        done = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE)
        end = time.monotonic()
    return end - start, done, end


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check_verdicts(out: Path, spans: int) -> None:
    lines = out.read_text().splitlines()
    expected = [f"{n}\tjob-{n - 1}\tvalid" for n in range(1, spans + 1)]
    if lines != expected:
        bad = next((i for i, (a, b) in enumerate(zip(lines, expected, strict=False)) if a != b), min(len(lines), spans))
        raise SystemExit(f"verify printed {len(lines)} lines for {spans} spans; first difference at line {bad + 1}")


def phase_run(file: Path, bootstrap: str, out: Path, mode: str) -> tuple[float, float, float]:
    """(whole seconds, verify-phase seconds, CPU seconds of the phase) of one probed CLI run; `mode` is
    `shipped` (the CLI as it is) or `serial` (every check on the main thread)."""
    cpu_before = child_cpu()
    whole, done, end = cli(["-c", PHASE_PROBE, str(file), mode], bootstrap, out)
    cpu_total = child_cpu() - cpu_before
    marks = [line.split() for line in done.stderr.decode().splitlines() if line.startswith("bench-book-loaded")]
    if done.returncode != 0 or not marks:
        raise SystemExit(f"keyledger verify (probed) exited {done.returncode}: {done.stderr.decode()[-500:]}")
    loaded_at, cpu_at_load = float(marks[0][1]), float(marks[0][2])
    return whole, end - loaded_at, cpu_total - cpu_at_load


async def publish_keys(bootstrap: str, tenants: list[Tenant]) -> None:
    await ensure_topics(bootstrap, Settings(kafka_bootstrap=bootstrap, kafka_partitions=6), ["keys.events"])  # type: ignore[call-arg]  # flat names, as tests spell them
    now = datetime.now(UTC)
    await produce(bootstrap, "keys.events", [(t.tenant_id.encode(), t.generated(now)) for t in tenants])


PHASE_RUNS = 3  # of each mode, alternating


async def run(spans: int) -> dict:
    tenants = [Tenant(i) for i in range(TENANTS)]
    say(f"verify: signing {spans} spans over {TENANTS} tenants with the signer's code")
    lines, raw = signed_spans(tenants, spans)
    floors: list[tuple[float, float]] = []  # raw (per wall second, per CPU second), around every phase run
    phases: list[tuple[str, float, float]] = []  # verify phase (mode, seconds, CPU seconds)

    def floor() -> None:
        floors.append(raw_verify_rate(raw))
        say(f"  raw Ed25519 verification: {floors[-1][0]:,.0f}/s ({floors[-1][1]:,.0f} per CPU second)")

    with tempfile.TemporaryDirectory(prefix="keyledger-bench-verify-") as folder, broker() as bootstrap:
        work = Path(folder)
        file, empty, out = work / "signed.jsonl", work / "empty.jsonl", work / "verdicts.txt"
        file.write_bytes(b"".join(line + b"\n" for line in lines))
        empty.write_bytes(b"")
        await publish_keys(bootstrap, tenants)
        say(f"verify: keyledger verify of {file.stat().st_size / 1e6:.1f} MB ({spans} spans), "
            f"{default_threads()} checking threads as shipped, between raw verifications (one core)")
        whole, done, _ = cli(["-m", "workers.app.cli", "verify", str(file)], bootstrap, out)
        if done.returncode != 0:
            raise SystemExit(f"keyledger verify exited {done.returncode}: {done.stderr.decode()[-500:]}")
        check_verdicts(out, spans)
        fixed, done, _ = cli(["-m", "workers.app.cli", "verify", str(empty)], bootstrap, work / "empty.txt")
        if done.returncode != 0:
            raise SystemExit(f"keyledger verify of an empty file exited {done.returncode}")
        floor()
        for mode in ["serial", "shipped"] * PHASE_RUNS:
            phases.append((mode, *phase_run(file, bootstrap, out, mode)[1:]))
            check_verdicts(out, spans)
            floor()
            say(f"  verify phase ({mode}): {spans / phases[-1][1]:,.0f} spans/s "
                f"({spans / phases[-1][2]:,.0f} per CPU second)")
        profile = os.environ.get("BENCH_PROFILE")
        if profile:
            probe = work / "probe.py"  # cProfile runs a script or a module, not -c
            probe.write_text(PHASE_PROBE)
            _, done, _ = cli(["-m", "cProfile", "-o", profile, str(probe), str(file), "serial"], bootstrap,
                             work / "profiled.txt")
            if done.returncode != 0:
                raise SystemExit(f"the profiled run exited {done.returncode}: {done.stderr.decode()[-500:]}")
            say(f"  profile of one single-threaded CLI run written to {profile}")
    figures = {"verify_spans": spans, "verify_raw_per_s": round(statistics.median(f[0] for f in floors)),
               "verify_raw_cpu_per_s": round(statistics.median(f[1] for f in floors)),
               "verify_cli_per_s": round(spans / whole),
               "verify_cli_ratio": round(spans / whole / statistics.median(f[0] for f in floors), 3),
               "verify_cli_seconds": round(whole, 3), "verify_cli_empty_seconds": round(fixed, 3),
               "verify_cli_less_empty_per_s": round(spans / max(whole - fixed, 1e-3)),
               "verify_threads": default_threads()}
    figures.update(phase_figures(spans, phases, floors, "shipped", "verify"))
    figures.update(phase_figures(spans, phases, floors, "serial", "verify_one_thread"))
    say(f"  whole CLI {figures['verify_cli_per_s']:,} spans/s ({whole:.2f} s; an empty file takes {fixed:.2f} s); "
        f"verify phase as shipped {figures['verify_per_s']:,}/s = {figures['verify_ratio']:.2f} of raw "
        f"({figures['verify_cpu_ratio']:.2f} per CPU second); on one thread {figures['verify_one_thread_per_s']:,}/s "
        f"= {figures['verify_one_thread_ratio']:.2f} ({figures['verify_one_thread_cpu_ratio']:.2f} per CPU second)")
    return figures


def phase_figures(spans: int, phases: list[tuple[str, float, float]], floors: list[tuple[float, float]], mode: str,
                  prefix: str) -> dict:
    """Each run of `mode` against the mean of the raw runs just before and after it, then the median:
    the machine is shared, and a neighbour's burst moves any single figure."""
    runs = [(p, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
            for p, a, b in zip(phases, floors, floors[1:], strict=False) if p[0] == mode]
    ratios = [spans / p[1] / raw for p, raw, _ in runs]
    cpu_ratios = [spans / p[2] / raw_cpu for p, _, raw_cpu in runs]
    return {f"{prefix}_per_s": round(spans / statistics.median(p[1] for p, _, _ in runs)),
            f"{prefix}_ratio": round(statistics.median(ratios), 3),
            f"{prefix}_ratio_runs": [round(r, 3) for r in ratios],
            f"{prefix}_cpu_per_s": round(spans / statistics.median(p[2] for p, _, _ in runs)),
            f"{prefix}_cpu_ratio": round(statistics.median(cpu_ratios), 3)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(int(os.environ.get("BENCH_VERIFY_SPANS", "100000"))))))
